"""The busy flag under a real race: many threads deliver commands at the same instant."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nixfleet_agent.commands import Context
from nixfleet_agent.dispatcher import Dispatcher
from nixfleet_agent.host.status import StatusStore
from support import wait_for


class RecordingReporter:
    """Records what commands would send to the dashboard (stands in for reporter.Reporter)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def _rec(self, kind: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((kind, args))

    def output(self, command: str, line: str, stream: str = "stdout") -> None:
        self._rec("output", command, line, stream)

    def status(self, command: str, status: str, exit_code: int, message: str = "") -> None:
        self._rec("status", command, status, exit_code, message)

    def progress(self, phase: str, current: int, total: int, status: str) -> None:
        self._rec("progress", phase, current, total, status)

    def test_progress(self, current: int, total: int, passed: int, running: bool, result: str) -> None:
        self._rec("test_progress", current, total, passed, running, result)

    def rejected(self, current_command: str, current_pid: int | None) -> None:
        self._rec("rejected", current_command, current_pid)

    def heartbeat_now(self) -> None:
        self._rec("heartbeat_now")

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [args for k, args in self.calls if k == kind]


def dispatcher_with_test(tmp_path: Path, script: str) -> tuple[Dispatcher, RecordingReporter, threading.Event]:
    """A real Dispatcher (no link) for host ``h`` whose one test ``T01.sh`` is ``script``."""
    tests = tmp_path / "repo" / "hosts" / "h" / "tests"
    tests.mkdir(parents=True)
    (tests / "T01.sh").write_text(script)
    (tests / "T01.sh").chmod(0o755)
    cfg = SimpleNamespace(state_dir=tmp_path / "state", privileged_dir=tmp_path / "privileged", op_log_max_mb=50,
                          repo_dir=tmp_path / "repo", hostname="h", platform="nixos", stop_grace=3)
    cfg.state_dir.mkdir(mode=0o700)
    rep = RecordingReporter()
    stop = threading.Event()
    dispatcher = Dispatcher(Context(cfg=cfg, reporter=rep, status=StatusStore(cfg.state_dir), repo=None,  # type: ignore[arg-type]
                                    stop_event=stop))
    return dispatcher, rep, stop


def test_only_one_of_many_simultaneous_commands_runs(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    dispatcher, rep, stop = dispatcher_with_test(
        tmp_path, f"#!/bin/sh\necho started\nwhile [ ! -e {gate} ]; do sleep 0.02; done\n")
    barrier = threading.Barrier(16)

    def deliver() -> None:
        barrier.wait()
        dispatcher.on_command("test")

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: ("output", ("test", "started", "stdout")) in rep.calls, 5, "the one accepted test to start")
    assert len(rep.of("rejected")) == 15
    assert all(args[0] == "test" for args in rep.of("rejected"))
    assert dispatcher.pending()[0] == "test" and isinstance(dispatcher.pending()[1], int)
    gate.write_text("")
    wait_for(lambda: rep.of("status"), 5, "the status")
    assert rep.of("status") == [("test", "ok", 0, "1/1 passed")]
    wait_for(lambda: dispatcher.pending() == (None, None), 5, "the busy flag to clear")
    stop.set()  # ends the dispatcher's shutdown watcher

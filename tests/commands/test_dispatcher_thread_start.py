"""A command whose worker thread cannot be started (a task limit: ``RuntimeError: can't start new
thread``) is reported as an error and leaves the host able to run the next command (issue 12 item 5:
before, the busy flag stayed set for ever and every later command was rejected)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from nixfleet_agent.commands import Context
from nixfleet_agent.dispatcher import Dispatcher
from nixfleet_agent.host.status import StatusStore
from support import wait_for
from test_dispatcher_race import RecordingReporter


def test_a_failed_thread_start_releases_the_busy_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tests = tmp_path / "repo" / "hosts" / "h" / "tests"
    tests.mkdir(parents=True)
    (tests / "T01.sh").write_text("#!/bin/sh\necho fine\n")
    (tests / "T01.sh").chmod(0o755)
    cfg = SimpleNamespace(state_dir=tmp_path / "state", op_log_max_mb=50, repo_dir=tmp_path / "repo", hostname="h",
                          platform="nixos", stop_grace=3)
    cfg.state_dir.mkdir(mode=0o700)
    rep = RecordingReporter()
    dispatcher = Dispatcher(Context(cfg=cfg, reporter=rep, status=StatusStore(cfg.state_dir), repo=None,  # type: ignore[arg-type]
                                    stop_event=threading.Event()))
    real_start = threading.Thread.start
    refused: list[str] = []

    def start(self: threading.Thread) -> None:
        if self.name.startswith("command-") and not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        dispatcher.on_command("test")
    except RuntimeError:
        pass  # the connection's message guard would log it (message_handler_failed) and read on
    assert refused == ["command-test"]
    assert rep.of("status") == [("test", "error", 1, "cannot start the command: can't start new thread")]
    assert dispatcher.pending() == (None, None)
    dispatcher.on_command("test")  # the next command is not rejected: it runs
    wait_for(lambda: len(rep.of("status")) == 2, 10, "the second command's status")
    assert rep.of("status")[1] == ("test", "ok", 0, "1/1 passed") and not rep.of("rejected")

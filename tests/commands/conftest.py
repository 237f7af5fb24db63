"""Fixtures for the command tests: tool shims on PATH and an agent session driven by the reference
dashboard (a real agent subprocess, a real WebSocket server, a real git repository)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import TEST_HOST  # noqa: F401  (re-exported for tests)

from cmd_support import SHIMS


class Shims:
    """Control files and the argv record of the tool shims (tests/shims/_shim)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "shim-control"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = root / "shim-calls.jsonl"

    def set(self, name: str, value: str | int) -> None:
        (self.dir / name).write_text(str(value))

    def clear(self, name: str) -> None:
        try:
            (self.dir / name).unlink()
        except FileNotFoundError:
            pass

    def calls(self, prog: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return []
        calls = [json.loads(line) for line in lines if line.strip()]
        return [c for c in calls if prog is None or c["prog"] == prog]

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{SHIMS}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "NIXFLEET_SHIM_DIR": str(self.dir),
            "NIXFLEET_SHIM_LOG": str(self.log),
        }


@pytest.fixture
def shims(tmp_path: Path) -> Shims:
    return Shims(tmp_path)


class Session:
    """One agent under test plus the dashboard that drives it."""

    def __init__(self, dashboard: Any, start: Callable[..., Any], shims: Shims, overrides: dict[str, str]) -> None:
        self.dash = dashboard
        self._start = start
        self.shims = shims
        self.overrides = overrides
        self.agent: Any = None

    def start(self, **more: str) -> Session:
        mark = self.dash.mark()
        self.agent = self._start(**{**self.shims.env(), **self.overrides, **more})
        self.dash.wait_message("register", since=mark, timeout=15)
        self.dash.wait_message("heartbeat", since=mark, timeout=10)
        return self

    def send(self, command: str) -> int:
        mark = self.dash.mark()
        self.dash.send_command("test-host", command)
        return mark

    def status_of(self, command: str, since: int, timeout: float = 15.0) -> Any:
        return self.dash.wait_message("status", since=since, timeout=timeout,
                                      where=lambda r: r.payload.get("command") == command)

    def run(self, command: str, timeout: float = 15.0) -> tuple[Any, list[Any]]:
        """Send a command, wait for its status; returns (status payload, records since sending)."""
        mark = self.send(command)
        status = self.status_of(command, mark, timeout)
        return status.payload, self.dash.messages(since=mark)[: status.index - mark + 1]

    def wait_reregistered(self, since: int) -> None:
        """After a successful switch the agent registers again; the dashboard waits for that."""
        self.dash.wait_message("register", since=since, timeout=10)
        self.dash.wait_message("heartbeat", since=self.dash.mark(), timeout=5)

    def lines(self, records: list[Any], command: str | None = None) -> list[str]:
        return [r.payload["line"] for r in records if r.type == "output"
                and (command is None or r.payload.get("command") == command)]


@pytest.fixture
def session(dashboard: Any, start_agent: Callable[..., Any], shims: Shims) -> Iterator[Session]:
    sess = Session(dashboard, start_agent, shims, {"PYTHONFAULTHANDLER": "1"})
    yield sess
    agent = sess.agent
    if agent is not None and agent.running():
        import signal as _signal
        import subprocess as _subprocess

        agent.proc.send_signal(_signal.SIGTERM)
        try:
            agent.proc.wait(4)
        except _subprocess.TimeoutExpired:  # diagnostics for a slow shutdown: dump all threads
            agent.proc.send_signal(_signal.SIGABRT)
            agent.proc.wait(5)
            print("\n--- agent did not stop within 4 s of SIGTERM; thread dump ---\n" + agent.tail(80))

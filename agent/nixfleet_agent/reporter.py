"""The only way commands talk to the dashboard: typed calls that become queued, durable messages.

Commands never see the socket or the Outbox, so ordering, size limits, replay after reconnect and
back-pressure are enforced in one place. ``request_exit``/``request_reconnect`` exist because the
dashboard only completes a switch when the agent registers again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from . import log
from .kinds import CommandStatus
from .link import protocol
from .link.outbox import Message, Outbox
from .redact import redact
from .host.status import StatusStore

_log = log.get("reporter")


class Reporter:
    def __init__(
        self,
        outbox: Outbox,
        status_store: StatusStore | None,
        *,
        generation: Callable[[], str] = lambda: "",
        stop: threading.Event | None = None,
    ) -> None:
        self._outbox = outbox
        self._status = status_store
        self._generation = generation
        self._stop = stop
        self._heartbeat_now: Callable[[], None] = lambda: None
        self._reconnect: Callable[[], None] = lambda: None
        self._exit: Callable[[int], None] = lambda code: None
        self._heartbeat_sync: Callable[[], None] = lambda: None

    def bind(
        self,
        *,
        heartbeat_now: Callable[[], None],
        reconnect: Callable[[], None],
        exit: Callable[[int], None],
        heartbeat_sync: Callable[[], None] | None = None,
    ) -> None:
        """Wired by the agent once the connection exists (the Reporter is created first).
        ``heartbeat_sync`` queues a fresh heartbeat in the caller's thread (before a post-switch close)."""
        self._heartbeat_now, self._reconnect, self._exit = heartbeat_now, reconnect, exit
        if heartbeat_sync is not None:
            self._heartbeat_sync = heartbeat_sync

    def _put(self, kind: str, payload: dict[str, object], command: str = "", *, journaled: bool = False) -> None:
        self._outbox.put(Message(kind, protocol.encode(kind, payload), True, command, journaled=journaled), self._stop)

    def output(self, command: str, line: str, stream: str = "stdout") -> None:
        self._put("output", protocol.output(command, redact(line), stream), command)

    def status(self, command: str, status: CommandStatus, exit_code: int, message: str = "") -> None:
        try:
            generation = self._generation()
        except Exception:  # noqa: BLE001 - a git hiccup must not cost us the final status
            generation = ""
        message = redact(message)  # before anything leaves the process: state.json, log, journal, frame
        # persisted before it is queued: once the dashboard has it, `nixfleet-agent status` must agree
        if self._status is not None:
            self._status.record_command(command, status, exit_code, message)
        _log.info("command_finished", command=command, status=status, exit_code=exit_code, message=message)
        # journaled (on disk until the dashboard confirmed it): survives a restart or SIGKILL
        self._put("status", protocol.status(command, status, exit_code, message, generation), command, journaled=True)

    def progress(self, phase: str, current: int, total: int, status: str) -> None:
        self._put("operation_progress", protocol.operation_progress(phase, current, total, status))

    def test_progress(self, current: int, total: int, passed: int, running: bool, result: str) -> None:
        self._put("test_progress", protocol.test_progress(current, total, passed, running, result))

    def rejected(self, current_command: str, current_pid: int | None) -> None:
        self._put("command_rejected", protocol.command_rejected(current_command, current_pid))

    def heartbeat_now(self) -> None:
        self._heartbeat_now()

    def _flush_before_close(self) -> bool:
        """A fresh heartbeat (the post-switch generation) after everything queued, then a bounded
        wait for the dashboard's evidence that it read all of it: closing at once would lose the
        heartbeat the dashboard needs to complete the switch (upstream waited ~0.5 s blindly)."""
        try:
            self._heartbeat_sync()
        except Exception as exc:  # noqa: BLE001 - a failed sample must not keep the link from closing
            _log.warn("heartbeat_failed", error=str(exc)[:200])
        return self._outbox.drain(10.0, self._stop)

    def request_reconnect(self) -> None:
        """Deliver what is queued (with evidence, at most 10 s), then close (1000) and register again."""
        if not self._flush_before_close():
            _log.warn("reconnect_with_undelivered", queued=len(self._outbox))
        self._reconnect()

    def request_exit(self, code: int) -> None:
        """Deliver what is queued (bounded wait), close 1000 "shutdown", make the agent exit with code."""
        if not self._flush_before_close():
            _log.warn("exit_with_undelivered", queued=len(self._outbox))
        self._exit(code)

"""The only way commands talk to the dashboard: typed calls that become queued, durable messages.

Commands never see the socket or the Outbox, so ordering, size limits, replay after reconnect and
back-pressure are enforced in one place. ``request_exit``/``request_reconnect`` exist because the
dashboard only completes a switch when the agent registers again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from . import log
from .link import protocol
from .link.outbox import Message, Outbox
from .redact import redact
from .status import StatusStore

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

    def bind(
        self,
        *,
        heartbeat_now: Callable[[], None],
        reconnect: Callable[[], None],
        exit: Callable[[int], None],
    ) -> None:
        """Wired by the agent once the connection exists (the Reporter is created first)."""
        self._heartbeat_now, self._reconnect, self._exit = heartbeat_now, reconnect, exit

    def _put(self, kind: str, payload: dict[str, object], command: str = "") -> None:
        self._outbox.put(Message(kind, protocol.encode(kind, payload), True, command), self._stop)

    def output(self, command: str, line: str, stream: str = "stdout") -> None:
        self._put("output", protocol.output(command, redact(line), stream), command)

    def status(self, command: str, status: str, exit_code: int, message: str = "") -> None:
        try:
            generation = self._generation()
        except Exception:  # noqa: BLE001 - a git hiccup must not cost us the final status
            generation = ""
        # persisted before it is queued: once the dashboard has it, `nixfleet-agent status` must agree
        if self._status is not None:
            self._status.record_command(command, status, exit_code, message)
        message = redact(message)
        _log.info("command_finished", command=command, status=status, exit_code=exit_code, message=message)
        self._put("status", protocol.status(command, status, exit_code, message, generation), command)

    def progress(self, phase: str, current: int, total: int, status: str) -> None:
        self._put("operation_progress", protocol.operation_progress(phase, current, total, status))

    def test_progress(self, current: int, total: int, passed: int, running: bool, result: str) -> None:
        self._put("test_progress", protocol.test_progress(current, total, passed, running, result))

    def rejected(self, current_command: str, current_pid: int | None) -> None:
        self._put("command_rejected", protocol.command_rejected(current_command, current_pid))

    def heartbeat_now(self) -> None:
        self._heartbeat_now()

    def request_reconnect(self) -> None:
        """Deliver what is queued, then close (1000) and register again."""
        self._outbox.drain(10.0)
        self._reconnect()

    def request_exit(self, code: int) -> None:
        """Deliver what is queued (bounded wait), close 1000 "shutdown", make the agent exit with code."""
        if not self._outbox.drain(10.0):
            _log.warn("exit_with_undelivered", queued=len(self._outbox))
        self._exit(code)

    def wait_delivered(self, timeout: float) -> bool:
        """Until everything queued (a command's final status included) is on the socket."""
        return self._outbox.drain(timeout, self._stop)

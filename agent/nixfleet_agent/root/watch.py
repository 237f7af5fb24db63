"""Every privileged run ends: an overall deadline, and a cancel request the agent can make.

Why: a ``nixos-rebuild`` that hangs (a stuck substituter, an activation script waiting for
ever) kept the root oneshot, and with it the agent, busy for ever; and the dashboard's
``stop``/``kill`` could not reach it, since the agent may not signal root's processes. So:

- the deadline (``--timeout``, the module's ``privileged.timeout`` rendered into the TOML as
  ``privileged_timeout``) comes from root's trusted configuration, never from the request;
- a cancel request is ``<request dir>/cancel.json`` ``{"id": "<id>"}``, read with exactly the
  rules of the request itself (``request.read_request``: no symlink anywhere, a regular file of
  the directory's owner with one link, bounded, removed before use). It ends only the run with
  that id: a cancel for another id (a stale one) is removed and ignored;
- both end the child's process group: SIGTERM, then SIGKILL after ``TERM_GRACE``; the leader is
  reaped only after the SIGKILL, so the group id cannot have been reused meanwhile.

Waiting is a bounded poll (``POLL`` seconds per turn, never past the deadline), no busy loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .. import log
from .request import MAX_REQUEST_BYTES, RequestError, read_request

_log = log.get("privileged")

POLL = 0.5  # how often a running child's cancel file is looked at
TERM_GRACE = 10.0  # SIGTERM -> SIGKILL of the build's process group
DEFAULT_TIMEOUT = 7200  # seconds: a switch that takes longer than 2 h is stuck
CANCELLED_EXIT = 143  # 128 + SIGTERM: what the agent shows as "stopped"
DEADLINE_EXIT = 124  # timeout(1)'s convention
CANCELLED = "cancelled by stop/kill from the dashboard"


class Ended(Exception):
    """The run was ended by root itself (deadline or cancel): ``exit_code`` and the reason."""

    def __init__(self, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


class Watch:
    """The deadline and cancel file of one request."""

    def __init__(self, request_id: str, cancel_path: Path | None, timeout: float) -> None:
        self.request_id = request_id
        self.cancel_path = cancel_path
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def check(self) -> None:
        """Raise ``Ended`` when the run must stop now (called between steps and while waiting)."""
        if self.cancelled():
            raise Ended(CANCELLED_EXIT, CANCELLED)
        if time.monotonic() >= self.deadline:
            raise Ended(DEADLINE_EXIT, self._deadline_text())

    def _deadline_text(self) -> str:
        return (f"deadline: the privileged run exceeded its deadline of {self.timeout:g}s "
                "(services.nixfleet-agent.privileged.timeout); root ended it")

    def cancelled(self) -> bool:
        """True when a valid cancel request for this id is there (it is consumed either way)."""
        if self.cancel_path is None:
            return False
        try:
            got = read_request(self.cancel_path, MAX_REQUEST_BYTES)
        except RequestError as err:
            _log.warn("cancel-refused", id=self.request_id, error=str(err).replace("request: ", "", 1))
            return False
        except OSError as exc:
            _log.warn("cancel-refused", id=self.request_id, error=exc.strerror or str(exc))
            return False
        if got is None:
            return False
        wanted = cancel_id(got[0])
        if wanted != self.request_id:
            _log.warn("cancel-ignored", id=self.request_id, cancel_id=wanted or "(none)",
                      error="not the running request")
            return False
        _log.info("cancel", id=self.request_id)
        return True

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for ``proc``; on cancel or deadline end its process group and raise ``Ended``."""
        while True:
            remaining = self.deadline - time.monotonic()
            try:
                return proc.wait(timeout=max(0.01, min(POLL, remaining)))
            except subprocess.TimeoutExpired:
                pass
            try:
                self.check()
            except Ended as ended:
                _log.warn("ending-child", id=self.request_id, pid=proc.pid, reason=str(ended))
                end_group(proc)
                raise


def end_group(proc: subprocess.Popen[bytes], grace: float | None = None) -> None:
    """SIGTERM the group ``proc`` leads, SIGKILL it after the grace, then reap the leader."""
    grace = TERM_GRACE if grace is None else grace
    _signal_group(proc.pid, signal.SIGTERM)
    until = time.monotonic() + grace
    while time.monotonic() < until and not _exited(proc.pid):
        time.sleep(0.1)
    _signal_group(proc.pid, signal.SIGKILL)  # stragglers of the group; the leader is at most a zombie
    proc.wait()


def _exited(pid: int) -> bool:
    """Has the leader exited? Without reaping it (``WNOWAIT``): it keeps the group id reserved."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def cancel_id(data: bytes) -> str:
    """The id a cancel request names; "" when it is not ``{"id": "<string>"}`` exactly."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ""
    if not isinstance(doc, dict) or set(doc) != {"id"} or not isinstance(doc["id"], str):
        return ""
    return doc["id"][:64]

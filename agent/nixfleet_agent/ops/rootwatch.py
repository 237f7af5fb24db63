"""Following a privileged operation to its end: root's started marker, the cancel request, and
the agent's own deadline (issue 13).

Why: the agent used to wait for ``result.json`` alone. Root now writes
``<privileged_dir>/<id>/started.json`` (with its pid) once it accepted the request, and always a
result (``--finalize`` in the unit's ``ExecStopPost=`` when the main run left none), and it ends
a run at its deadline. The follower still must never wait for ever when even that fails (an
older root unit, no systemd on nix-darwin, a root that hangs), so here:

- **root's pid**: once ``started.json`` is there, a pid that no longer exists (``kill(pid, 0)``
  gives ESRCH; EPERM means alive: it is root's) on two checks in a row, with the unit not running
  where systemd can say, and still no result, ends the operation with an error naming it;
- **the deadline**: ``privileged_timeout`` (the same setting root reads) plus ``DEADLINE_MARGIN``
  from when the operation was recorded; then the agent asks root to cancel (if it still runs)
  and reports a final error;
- **cancel**: ``stop``/``kill`` write ``<state_dir>/privileged/cancel.json`` ``{"id"}`` through
  ``request_cancel``; a request root has not picked up yet is simply taken back; root honours
  the cancel and writes the result (exit 143, "cancelled by stop/kill from the dashboard"); if it
  does not confirm within ``CANCEL_CONFIRM`` seconds the operation ends with an error saying so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..privatefs import write_private
from . import liveness
from .journal import Operation
from .runner import Result

DEFAULT_TIMEOUT = 7200  # = root/watch.DEFAULT_TIMEOUT: both read privileged_timeout from one TOML
DEADLINE_MARGIN = 300.0  # root's own deadline, its SIGTERM grace and --finalize fit well inside this
CANCEL_CONFIRM = 60.0  # root ends the build within its 10 s grace; then the agent stops waiting
CHECK_EVERY = 2.0


def cancel_path(state_dir: Path) -> Path:
    return Path(state_dir) / "privileged" / "cancel.json"


def request_cancel(state_dir: Path, op_id: str) -> str | None:
    """Ask root to cancel ``op_id`` (atomic, a private file of ours: the only kind root reads)."""
    try:
        write_private(cancel_path(state_dir), json.dumps({"id": op_id}), durable=True)
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def root_pid(started: Path) -> int | None:
    """The pid root's run recorded in ``started.json``; None while absent or unusable."""
    try:
        doc = json.loads(started.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = doc.get("pid") if isinstance(doc, dict) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1 else None


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, it is root's
        return True
    return True


class RootWatch:
    """The extra ways out of a privileged follow; ``poll`` is called on every idle turn."""

    def __init__(self, state_dir: Path, op: Operation, timeout: float,
                 killed_by: Callable[[], int | None]) -> None:
        self.state_dir = Path(state_dir)
        self.op = op
        self.timeout = timeout
        self.killed_by = killed_by
        self.started = Path(op.result_path).with_name("started.json")
        self.request = Path(state_dir) / "privileged" / "request.json"
        self.cancel_seen: float | None = None
        self.checked_at = 0.0
        self.dead = 0

    def poll(self) -> Result | None:
        now = time.monotonic()
        if self.killed_by() is not None and self.cancel_seen is None:
            self.cancel_seen = now
            taken = self._take_back_request()
            if taken:
                return Result(exit_code=143, start_error="cancelled by stop/kill from the dashboard "
                                                         "before the privileged unit picked the request up")
        if self.cancel_seen is not None and now - self.cancel_seen > CANCEL_CONFIRM:
            return Result(exit_code=1, start_error=(
                f"stop/kill asked the privileged unit to cancel {self.op.id}, but it did not confirm within "
                f"{CANCEL_CONFIRM:.0f}s; the switch's outcome is unknown"))
        limit = self.timeout + DEADLINE_MARGIN
        if time.time() - self.op.started_at > limit:
            request_cancel(self.state_dir, self.op.id)  # if root still runs it, it ends it
            return Result(exit_code=124, start_error=(
                f"no result from the privileged unit within {limit:.0f}s (privileged_timeout {self.timeout:.0f}s "
                f"plus {DEADLINE_MARGIN:.0f}s); the agent stopped waiting and asked root to cancel it"))
        if now - self.checked_at < CHECK_EVERY:
            return None
        self.checked_at = now
        pid = root_pid(self.started)
        dead = pid is not None and not pid_exists(pid) and not liveness.running(liveness.unit_state())
        self.dead = self.dead + 1 if dead else 0
        if self.dead >= 2:  # twice: --finalize (ExecStopPost=) had its time to write the result
            return Result(exit_code=1, start_error=(
                f"the privileged run of {self.op.id} (root pid {pid}) ended without a result"))
        return None

    def _take_back_request(self) -> bool:
        """A request root has not taken yet is removed: nothing will run it."""
        try:
            doc = json.loads(self.request.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("id") != self.op.id:
                return False
            self.request.unlink()
        except (OSError, ValueError):
            return False
        return True

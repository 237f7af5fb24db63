"""Is the thing an operation waits on still alive? (issue 13 item 1)

Why: a privileged switch is run by the root unit; if that unit dies (OOM, ``systemctl kill``, a
crash before it writes ``result.json``) no result ever appears, and a follower that only waits for
the result keeps the agent busy for ever, across restarts. The follower therefore asks the service
manager for the unit's state: once the request has been consumed (or was never written) and the
unit is no longer active, a result that is still missing will never come.

The same holds for a switch in its own transient user unit (Home Manager on Linux, see
``ops/transient.py``): :class:`UnitWatch` asks the user manager the same question.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable

PRIVILEGED_UNIT = "nixfleet-agent-privileged.service"
RUNNING_STATES = ("active", "activating", "deactivating", "reloading", "refreshing")


def unit_state(unit: str = PRIVILEGED_UNIT, *, user: bool = False) -> dict[str, str] | None:
    """``{"ActiveState": ..., "Result": ..., "LoadState": ...}`` of a system unit (``user``: of a
    unit of this user's manager), or None when it cannot be known (no systemctl, no answer): the
    caller then relies on its other checks."""
    exe = shutil.which("systemctl")
    if exe is None:
        return None
    scope = ["--user"] if user else []
    try:
        out = subprocess.run([exe, *scope, "show", "-p", "ActiveState,Result,LoadState", unit], capture_output=True,
                             text=True, timeout=10, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    state = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return state if "ActiveState" in state else None


def running(state: dict[str, str] | None) -> bool:
    return state is not None and state.get("ActiveState", "") in RUNNING_STATES


def ended(state: dict[str, str] | None) -> bool:
    return state is not None and state.get("ActiveState", "") not in RUNNING_STATES


class UnitWatch:
    """Liveness of a transient user unit an operation runs in, asked every ``every`` seconds.

    ``ended()`` names how the unit ended once two checks in a row found it no longer running (one
    could fall between the start job and the exec). When the manager cannot be asked at all, the
    wrapper's pid (the unit's main process) is what is left to check.
    """

    def __init__(self, unit: str, *, user: bool = True, pid: int | None = None,
                 alive: Callable[[int | None], bool] | None = None, every: float = 2.0) -> None:
        self.unit, self.user, self.pid, self.alive, self.every = unit, user, pid, alive, every
        self.checked_at = time.monotonic()
        self.dead = 0

    def ended(self) -> str | None:
        if time.monotonic() - self.checked_at < self.every:
            return None
        self.checked_at = time.monotonic()
        state = unit_state(self.unit, user=self.user)
        if state is None:
            self.dead = 0
            if self.pid and self.alive is not None and not self.alive(self.pid):
                return f"the switch process {self.pid} of {self.unit} ended without a result"
            return None
        self.dead = self.dead + 1 if ended(state) else 0
        if self.dead < 2:
            return None
        if state.get("LoadState") == "not-found":
            return (f"the switch unit {self.unit} is gone without a result "
                    "(it never started, or ended and was collected without writing one)")
        return (f"the switch unit {self.unit} ended without a result "
                f"(ActiveState={state.get('ActiveState')}, Result={state.get('Result', '?')})")

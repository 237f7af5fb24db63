"""Is the thing an operation waits on still alive? (issue 13 item 1)

Why: a privileged switch is run by the root unit; if that unit dies (OOM, ``systemctl kill``, a
crash before it writes ``result.json``) no result ever appears, and a follower that only waits for
the result keeps the agent busy for ever, across restarts. The follower therefore asks the service
manager for the unit's state: once the request has been consumed (or was never written) and the
unit is no longer active, a result that is still missing will never come.
"""

from __future__ import annotations

import shutil
import subprocess

PRIVILEGED_UNIT = "nixfleet-agent-privileged.service"
RUNNING_STATES = ("active", "activating", "deactivating", "reloading", "refreshing")


def unit_state(unit: str = PRIVILEGED_UNIT) -> dict[str, str] | None:
    """``{"ActiveState": ..., "Result": ...}`` of a system unit, or None when it cannot be known
    (no systemctl, no answer): the caller then relies on its other checks."""
    exe = shutil.which("systemctl")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "show", "-p", "ActiveState,Result", unit], capture_output=True, text=True,
                             timeout=10, stdin=subprocess.DEVNULL, check=False)
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

"""The ``nixfleet-agent status`` lines for needs-reboot and drift, from the summary the running
agent keeps in the state file (``extras.visibility``). Tolerates any shape: the state file may be
old, hand-edited or from another version."""

from __future__ import annotations

import calendar
import time
from typing import Any


def _days_since(stamp: Any, now: float) -> str:
    if not isinstance(stamp, str):
        return ""
    try:
        then = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except (ValueError, OverflowError):
        return ""
    days = max(0, int(now - then) // 86400)
    return f" ({days} day{'s' if days != 1 else ''} ago)"


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def lines(extras: dict[str, Any], now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    summary = extras.get("visibility")
    if not isinstance(summary, dict):
        return []
    out: list[str] = []
    rb = _table(summary.get("reboot"))
    if rb.get("applicable") is False:
        out.append("needs reboot: not applicable on this platform")
    elif rb.get("needed") is True:
        found = rb.get("reasons")
        reasons: list[Any] = found if isinstance(found, list) else []
        out.append(f"needs reboot: yes ({', '.join(str(r) for r in reasons)})")
    elif rb.get("needed") is False:
        out.append("needs reboot: no")
    else:
        out.append(f"needs reboot: unknown{' (' + str(rb.get('detail')) + ')' if rb.get('detail') else ''}")
    auto = _table(rb.get("auto"))
    if auto.get("allowed") is True:
        planned = auto.get("planned_at")
        out.append(f"automatic reboot: allowed in {auto.get('window')}"
                   + (f", planned at {planned}" if isinstance(planned, str) else ""))
    dr = _table(summary.get("drift"))
    deployed = dr.get("deployed_commit")
    behind = dr.get("commits_behind")
    if isinstance(deployed, str) and isinstance(behind, int):
        text = f"drift: deployed {deployed[:12]}, {behind} commit{'s' if behind != 1 else ''} behind origin"
        if behind and isinstance(dr.get("behind_since"), str):
            text += f" since {dr['behind_since']}{_days_since(dr['behind_since'], now)}"
        out.append(text)
    else:
        out.append(f"drift: unknown ({dr.get('detail') or 'not computed yet'})")
    if isinstance(dr.get("lock_last_modified"), str):
        out.append(f"deployed flake.lock: newest input from {dr['lock_last_modified']}"
                   f"{_days_since(dr['lock_last_modified'], now)}")
    return out

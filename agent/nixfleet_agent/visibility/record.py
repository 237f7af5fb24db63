"""What the agent remembers for drift and metrics, kept in the state file's ``extras`` (so it
survives restarts and ``nixfleet-agent status`` can show it without a running agent):

* ``switch``: the last switch-like operation (time, action, commit, success), the time of the
  last successful one, the deployed commit and the commits deployed before it (a rollback goes
  back to the previous one).
* ``counters``: health-check failures and rollbacks, fed by :func:`note_health_failure` and
  :func:`note_rollback` (the health checks of issue 14 call them).

``finish`` is called by ``commands.rebuild.finish_operation``: one line there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..host.status import StatusStore

SWITCH_KEY = "switch"
COUNTERS_KEY = "counters"
HISTORY = 10
_lock = threading.Lock()
_listeners: list[Callable[[], None]] = []
_bound: list[StatusStore] = []


def bind(status: StatusStore, changed: Callable[[], None]) -> None:
    """The running agent's store and its "something changed" hook (rewrites the metrics file)."""
    with _lock:
        _bound[:] = [status]
        _listeners[:] = [changed]


def _changed() -> None:
    for listener in list(_listeners):
        listener()


def switch_record(status: StatusStore) -> dict[str, Any]:
    value = status.extra(SWITCH_KEY)
    return value if isinstance(value, dict) else {}


def deployed_commit(status: StatusStore) -> str:
    value = switch_record(status).get("deployed")
    return value if isinstance(value, str) else ""


def finish(status: StatusStore, action: str, commit: str, ok: bool, now: Callable[[], float] = time.time) -> None:
    """Record a finished switch/boot/rollback operation."""
    with _lock:
        record = dict(switch_record(status))
        stamp = int(now())
        action = str(getattr(action, "value", action))
        record["last"] = {"at": stamp, "action": action, "commit": commit, "ok": bool(ok)}
        if ok:
            record["last_ok_at"] = stamp
            raw = record.get("history")
            history = [c for c in raw if isinstance(c, str)] if isinstance(raw, list) else []
            if action == "rollback":
                history = history[:-1]
            elif commit:
                history = [c for c in history if c != commit] + [commit]
            record["history"] = history[-HISTORY:]
            record["deployed"] = history[-1] if history else ""
        status.note(SWITCH_KEY, record)
    _changed()


def counters(status: StatusStore) -> dict[str, int]:
    value = status.extra(COUNTERS_KEY)
    raw = value if isinstance(value, dict) else {}
    return {k: int(raw[k]) if isinstance(raw.get(k), int) else 0 for k in ("health_check_failures", "rollbacks")}


def _bump(name: str, by: int) -> None:
    with _lock:
        if not _bound:
            return
        status = _bound[0]
        values = counters(status)
        values[name] += max(0, int(by))
        status.note(COUNTERS_KEY, values)
    _changed()


def note_health_failure(count: int = 1) -> None:
    """A health check failed (``nixfleet_agent_health_check_failures_total``)."""
    _bump("health_check_failures", count)


def note_rollback() -> None:
    """An automatic rollback happened (``nixfleet_agent_rollbacks_total``)."""
    _bump("rollbacks", 1)

"""A request root accepted always ends with a ``result.json``: the started marker and ``--finalize``.

Why: the agent followed a privileged switch by waiting for ``result.json``; a root run that was
killed (``systemctl kill``, the OOM killer) or crashed wrote none, and the agent could only guess
from the unit's state. Now:

1. as soon as root accepted a request it records it in its own state (``<state-dir>/current.json``,
   root's, ``0700`` directory: what ``--finalize`` trusts) and writes ``results/<id>/started.json``
   ``{"id", "action", "pid", "started_at", "timeout"}`` for the agent (the same private file rules
   as ``result.json``, ``results``);
2. the main run removes ``current.json`` after it wrote the result;
3. the unit's ``ExecStopPost=`` runs ``nixfleet-agent-privileged --finalize`` (same arguments),
   which runs after the main process ended however it ended, and, when ``current.json`` is still
   there and the request has no ``result.json``, writes one: exit code 1 and an error naming
   systemd's ``$SERVICE_RESULT``, ``$EXIT_CODE`` and ``$EXIT_STATUS``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .. import log
from . import results
from ..names import valid_id
from .request import Request

_log = log.get("privileged")

CURRENT = "current.json"
STARTED = "started.json"
RESULT = "result.json"


def begin(out: results.Results, op_dir: Path, req: Request, state_dir: Path, timeout: float) -> None:
    """Record the accepted request for ``--finalize``, then tell the agent it started."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = state_dir / f".{CURRENT}.tmp"
    tmp.write_text(json.dumps({"id": req.id, "action": req.action, "owner": req.owner}) + "\n")
    os.replace(tmp, state_dir / CURRENT)
    out.write_json(op_dir, STARTED, {"id": req.id, "action": req.action, "pid": os.getpid(),
                                     "started_at": results.now(), "timeout": timeout}, req.owner)


def end(state_dir: Path) -> None:
    try:
        (state_dir / CURRENT).unlink()
    except FileNotFoundError:
        pass


def describe_end(env: Mapping[str, str]) -> str:
    """How systemd says the main process ended (``ExecStopPost=``'s environment)."""
    return ", ".join(f"{name}={env.get(name) or '?'}" for name in ("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS"))


def finalize(out_dir: Path, state_dir: Path, env: Mapping[str, str]) -> int:
    """``ExecStopPost=``: give the request the main run accepted a result if it left none."""
    try:
        doc = json.loads((state_dir / CURRENT).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return 0  # nothing accepted, or the main run finished it
    except (OSError, ValueError) as exc:
        _log.error("finalize-failed", error=f"unreadable {state_dir / CURRENT}: {exc}")
        end(state_dir)
        return 1
    request_id, owner = doc.get("id"), doc.get("owner")
    if not (valid_id(request_id)
            and isinstance(owner, int)):
        _log.error("finalize-failed", error=f"{state_dir / CURRENT} names no usable request")
        end(state_dir)
        return 1
    op_dir = out_dir / request_id
    try:
        if os.path.lexists(op_dir / RESULT) or not op_dir.is_dir() or op_dir.is_symlink():
            return 0
        error = f"the privileged run of {request_id} ended without a result ({describe_end(env)})"
        results.Results(out_dir).write_json(op_dir, RESULT, {
            "id": request_id, "action": str(doc.get("action") or ""), "exit_code": 1, "error": error,
            "finished_at": results.now()}, owner)
        _log.warn("finalized", id=request_id, error=error)
        return 0
    except OSError as exc:
        _log.error("finalize-failed", id=request_id, error=f"{exc.filename or ''}: {exc.strerror or exc}")
        return 1
    finally:
        end(state_dir)

"""The agent's part of the guard-rails: what ``commands/rebuild.py`` calls.

Where root switches (the NixOS module's root unit, the nix-darwin daemon) root runs the pre-flight
check against its own trusted configuration, and the agent only shows root's verdict. Where the
agent switches itself (Home Manager, a NixOS or nix-darwin host without the modules' root side) it
runs the same check before it starts the switch: on Home Manager the configured ``[preflight]``
names ``/nix/store`` only (the module renders no boot paths), and the refusal reaches the
dashboard as the command's error exactly as root's does (``preflight: ...``, exit code 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import log
from . import preflight

if TYPE_CHECKING:  # pragma: no cover
    from ..commands import Job
    from ..ops.operations import Operation

_log = log.get("guard")
REFUSED_EXIT = 2  # the root side's refusal code, so both read the same on the dashboard


def refused(job: Job, privileged: bool) -> bool:
    """Refuse the switch (and say so everywhere) when the host lacks the space for it."""
    if privileged:
        return False  # root checks, with the thresholds of its own configuration
    short = preflight.shortfalls(job.ctx.cfg.guard.preflight)
    if not short:
        return False
    text = "preflight: " + preflight.refusal(short)
    _log.warn("switch-refused", rule="preflight", error=text)
    job.progress("system", 0, 3, "error")
    job.err(f"❌ {text}")
    job.ctx.status.set("system", "error", "Switch refused: not enough free space")
    job.status("error", REFUSED_EXIT, text)
    job.ctx.reporter.heartbeat_now()
    return True


def result_note(op: Operation) -> str:
    """Root's notes on a successful switch (``boot`` instead of ``switch``, a failed retention step),
    one line for the final status; empty when there are none or the result is not root's."""
    if op.launcher != "privileged":
        return ""
    try:
        doc = json.loads(Path(op.result_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    notes = doc.get("notes") if isinstance(doc, dict) else None
    if not isinstance(notes, list):
        return ""
    return "; ".join(str(n) for n in notes if isinstance(n, str))[:2000]

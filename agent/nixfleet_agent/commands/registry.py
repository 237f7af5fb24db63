"""Command name -> handler. Every name the dashboard ecosystem sends is here (protocol 4.1);
anything else gets a ``status`` error naming it."""

from __future__ import annotations

from collections.abc import Callable

from . import Job, pulling, rebuild, refresh, testing, update
from .control import reboot, restart
from .rebuild import resume_operation

__all__ = ["HANDLERS", "reboot", "restart", "resume_operation", "run"]

HANDLERS: dict[str, Callable[[Job], None]] = {
    "pull": pulling.pull,
    "switch": rebuild.switch,
    "pull-switch": rebuild.pull_switch,
    "rollback": rebuild.rollback,
    "force-update": rebuild.force_update,
    "force-rebuild": rebuild.force_rebuild,
    "test": testing.test,
    "update": update.update,
    "bump-flake": update.bump_flake,
    "check-version": refresh.check_version,
    "refresh-git": refresh.refresh_git,
    "refresh-lock": refresh.refresh_lock,
    "refresh-system": refresh.refresh_system,
    "refresh-all": refresh.refresh_all,
}


def run(job: Job) -> None:
    handler = HANDLERS.get(job.name)
    if handler is None:
        shown = job.name if job.name else "(empty)"
        job.err(f"❌ Unknown command: {shown}")
        job.status("error", 1, f"unknown command: {shown}")
        return
    handler(job)

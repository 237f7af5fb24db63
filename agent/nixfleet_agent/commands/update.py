"""``update`` and ``bump-flake``: update ``flake.lock``, commit and push it (``repo.lockupdate``).

``update`` moves every input; ``bump-flake`` (the dashboard's name for "pick up a new agent";
the upstream agent answered "unknown command") moves only the input that provides the
agent (``agent_input``, default ``nixfleet-agent``; upstream's was ``nixfleet``), as its CORE-001 definition (``nix flake update
nixfleet``) says. A host that cannot push (HTTPS without
credentials, read-only deploy key) falls back to pull + switch, as upstream's v1 agent did.
"""

from __future__ import annotations

import signal

from ..repo import lockupdate
from ..ops.operations import signal_group
from . import Job
from .rebuild import pull_switch


def update(job: Job, inputs: tuple[str, ...] = ()) -> None:
    ctx = job.ctx
    if ctx.repo is None:
        job.err("❌ No repository configured (repo_url / repo_dir)")
        job.status("error", 1, "no repository")
        return
    job.say(f"🔄 Updating flake input{'s' if not inputs else ''} {', '.join(inputs)}".rstrip() + "...")
    result = lockupdate.update(ctx.repo, job.run_fn(), stop=ctx.stop_event, emit=job.say, inputs=inputs,
                                track=lambda pid: _track_push(job, pid))
    if result.needs_pull_switch:
        job.err("⚠️  Cannot push flake.lock from this host: falling back to pull + switch")
        pull_switch(job)
        return
    ctx.status.refresh_lock(ctx.repo.path, force=True)
    if result.exit_code != 0:
        from ..ops.runner import Result
        if not job.stopped_status(Result(result.exit_code)):
            job.status("error", result.exit_code, result.message)
    else:
        job.say(f"✅ {result.message}")
        job.status("ok", 0, result.message)
    ctx.reporter.heartbeat_now()


def _track_push(job: Job, pid: int | None) -> None:
    """A push is PID-tracked like any child; one started after a ``stop`` arrived ends at once."""
    job.tracker.track(pid)
    if pid is not None and job.tracker.cancelled():
        signal_group(pid, signal.SIGTERM)


def bump_flake(job: Job) -> None:
    update(job, (job.ctx.cfg.agent_input,))

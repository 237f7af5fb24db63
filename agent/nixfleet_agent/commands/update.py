"""``update`` and ``bump-flake``: update ``flake.lock``, commit and push it (``flakeupdate``).

``bump-flake`` (the dashboard's name, upstream agent answered "unknown command") and ``update``
are the same operation: Nix 2.8's ``nix flake update`` has no per-input form and the fleet's
lock should move as a whole. A host that cannot push (HTTPS without credentials, read-only deploy
key) falls back to pull + switch, as upstream's v1 agent did.
"""

from __future__ import annotations

from .. import flakeupdate
from . import Job
from .rebuild import pull_switch


def update(job: Job) -> None:
    ctx = job.ctx
    if ctx.repo is None:
        job.err("❌ No repository configured (repo_url / repo_dir)")
        job.status("error", 1, "no repository")
        return
    job.say("🔄 Updating flake inputs...")
    result = flakeupdate.update(ctx.repo, job.run_fn(), stop=ctx.stop_event, emit=job.say)
    if result.needs_pull_switch:
        job.err("⚠️  Cannot push flake.lock from this host: falling back to pull + switch")
        pull_switch(job)
        return
    ctx.status.refresh_lock(ctx.repo.path, force=True)
    if result.exit_code != 0:
        from ..runner import Result
        if not job.stopped_status(Result(result.exit_code)):
            job.status("error", result.exit_code, result.message)
    else:
        job.say(f"✅ {result.message}")
        job.status("ok", 0, result.message)
    ctx.reporter.heartbeat_now()


bump_flake = update

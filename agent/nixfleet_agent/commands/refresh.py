"""``refresh-git``, ``refresh-lock``, ``refresh-system``, ``refresh-all`` and ``check-version``:
recompute one status compartment (or the agent version check) on demand.

Texts follow upstream (4.2) so the dashboard shows the same things. Children run through
``Job.run`` (logged, stoppable) with a capture sink, since their raw output is input to a verdict
rather than something to show; ``refresh-system`` keeps upstream's 60 s limit.
"""

from __future__ import annotations

import os

from .. import buildinfo, nix
from . import Job, agentpkg
from .rebuild import current_link

SYSTEM_TIMEOUT = 60.0
VERSION_TIMEOUT = 10.0


class Capture:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def output(self, command: str, line: str, stream: str = "stdout") -> None:
        self.lines.append(line)


def refresh_git(job: Job) -> None:
    job.say("Git status is checked by dashboard (GitHub API)")
    job.status("ok", 0, "git status check is dashboard-side")


def refresh_lock(job: Job) -> None:
    ctx = job.ctx
    ctx.status.set("lock", "working", "Refreshing...")
    job.say("Refreshing lock file status...")
    lock = _refresh_lock(job)
    job.say(f"✓ Lock status: {lock['status']} ({lock['message']})")
    job.status("ok", 0, lock["status"])
    ctx.reporter.heartbeat_now()


def _refresh_lock(job: Job) -> dict[str, str]:
    ctx = job.ctx
    return ctx.status.refresh_lock(job.repo_path, force=True)


def system_verdict(job: Job) -> tuple[str, str]:
    cfg = job.ctx.cfg
    repo = job.repo_path
    host = cfg.hostname
    link = current_link(cfg.platform)
    if cfg.platform == "home-manager":
        attr, what = f"homeConfigurations.{host}.activationPackage", "Home Manager"
        if not link.exists():
            return "unknown", "No Home Manager profile found"
    else:
        kind = "darwinConfigurations" if cfg.platform == "darwin" else "nixosConfigurations"
        attr = f"{kind}.{host}." + ("system" if cfg.platform == "darwin" else "config.system.build.toplevel")
        what = "System"
    try:
        current = os.path.realpath(link, strict=True)
    except OSError as exc:
        return "error", f"Cannot read current system: {exc.strerror or exc}"
    cap = Capture()
    env = job.repo_env()
    res = job.run(nix.dry_build(f"{repo}#{attr}"), env, repo, timeout=SYSTEM_TIMEOUT, sink=cap)
    if not res.ok:
        first = next((line for line in cap.lines if line.strip()), res.describe())
        return "unknown", f"Evaluation failed: {first}"
    if any(current in line for line in cap.lines):
        return "ok", f"{what} is current"
    return "outdated", "System needs rebuild" if what == "System" else "Home Manager needs switch"


def refresh_system(job: Job) -> None:
    ctx = job.ctx
    job.say("Refreshing system status (this may take some time)...")
    status, message = system_verdict(job)
    if job.tracker.sent_signal() is not None:
        job.status("stopped", 130, f"stopped by {job.stopped_by()}")
        return
    ctx.status.set("system", status, message)
    job.say(f"✓ System status: {status} ({message})")
    job.status("ok", 0, status)
    ctx.reporter.heartbeat_now()


def refresh_all(job: Job) -> None:
    job.say("Refreshing all status checks...")
    lock = _refresh_lock(job)
    system = job.ctx.status.get("system")
    job.say(f"✓ Lock: {lock['status']} ({lock['message']})")
    job.say(f"✓ System: {system['status'] or 'unknown'} ({system['message']})")
    job.status("ok", 0, "all refreshed")
    job.ctx.reporter.heartbeat_now()


def check_version(job: Job) -> None:
    running = buildinfo.version()
    job.say("🔍 Checking agent version...")
    job.say(f"   Running version: {running}")
    path = agentpkg.installed_agent(job.ctx.cfg.platform)
    shown = str(path) if path is not None else "nixfleet-agent"
    job.say(f"   Binary path: {shown}")
    cap = Capture()
    res = job.run([shown, "--version"], timeout=VERSION_TIMEOUT, sink=cap)
    text = " ".join(line.strip() for line in cap.lines if line.strip())
    if not res.ok or not text:
        why = res.describe() if not res.ok else "no output"
        job.err(f"❌ Failed to check installed version: {why}{': ' + text if text else ''}")
        job.status("error", 1, "failed to check installed version")
        return
    installed = text.split()[-1] if text.startswith("nixfleet-agent") else text
    if installed == running:
        job.say(f"✅ Agent OK: running {running}, installed {installed}")
        job.status("ok", 0, f"running={running} installed={installed}")
    else:
        job.say(f"⚠️  Agent mismatch: running {running}, installed {installed}")
        job.say("   Restart agent to pick up new version")
        job.status("warning", 0, f"mismatch: running={running} installed={installed}")

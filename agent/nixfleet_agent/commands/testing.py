"""``test``: run the host's own test scripts and say exactly which passed.

``hosts/<host>/tests/*.sh`` in sorted order, each on its own (own process group, streamed, its
exit status counted), a ``test_progress`` message after each, and the command fails if any
script failed. Upstream's shell loop returned the last script's status only and called "no
tests" a failure; here "no tests" is a success (T08) - but only in a repository that is there: without
one nothing was looked at, so ``test`` is an error and Tests does not turn green next to "Repository
unavailable" (issue 13 item 6). A ``*.sh`` file that is not executable is
skipped with a warning line and not counted (upstream's ``[ -x "$f" ] &&`` intent). On macOS the
Nix profile script is sourced first when present, as upstream did, so tests find ``nix``.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import Job

NIX_PROFILE_SH = "~/.nix-profile/etc/profile.d/nix.sh"


def test(job: Job) -> None:
    ctx = job.ctx
    cfg = ctx.cfg
    tests_dir = job.repo_path / "hosts" / cfg.hostname / "tests"
    repo = ctx.repo
    unusable = (not job.repo_path.is_dir() if repo is None  # no repo module in this build: the dir as is
                else not repo.ready() and bool(repo.last_error or not repo.path.is_dir()))
    if unusable:
        why = (repo.last_error if repo is not None and repo.last_error else f"no repository at {job.repo_path}")
        job.progress("tests", 0, 8, "error")
        job.err(f"❌ Cannot run tests: repository not ready ({why})")
        ctx.status.set("tests", "error", "Tests not run: repository not ready")
        job.status("error", 1, f"repository not ready: {why}")
        ctx.reporter.heartbeat_now()
        return
    job.progress("tests", 0, 8, "in_progress")
    ctx.status.set("tests", "working", "Tests running...")
    try:
        scripts = sorted(p for p in tests_dir.glob("*.sh") if p.is_file())
    except OSError:
        scripts = []
    runnable = []
    for script in scripts:
        if os.access(script, os.X_OK):
            runnable.append(script)
        else:
            job.err(f"⏭  skipping {script.name}: not executable")
    total = len(runnable)
    if total == 0:
        job.say(f"No tests found in hosts/{cfg.hostname}/tests (nothing to run)")
        ctx.reporter.test_progress(0, 0, 0, False, "no tests")
        job.progress("tests", 8, 8, "complete")
        ctx.status.set("tests", "ok", "No tests configured")
        job.status("ok", 0, "no tests")
        ctx.reporter.heartbeat_now()
        return
    nix_sh = Path(os.path.expanduser(NIX_PROFILE_SH))
    passed = 0
    failed: list[str] = []
    for index, script in enumerate(runnable, start=1):
        job.say(f"▶ [{index}/{total}] {script.name}")
        argv = [str(script)]
        if cfg.platform != "nixos" and nix_sh.is_file():
            argv = ["/bin/sh", "-c", '. "$1"; exec "$2"', "sh", str(nix_sh), str(script)]
        result = job.run(argv, None, job.repo_path)
        if result.ok:
            passed += 1
            job.say(f"✅ {script.name} passed")
            verdict = "passed"
        else:
            failed.append(script.name)
            job.err(f"❌ {script.name} failed ({result.describe()})")
            verdict = "failed"
        ctx.reporter.test_progress(index, total, passed, index < total, f"{script.name}: {verdict}")
        if job.tracker.sent_signal() is not None:
            break
    summary = f"{passed}/{total} passed"
    ctx.reporter.test_progress(total, total, passed, False, summary)
    if job.tracker.sent_signal() is not None:
        job.progress("tests", 0, 8, "error")
        ctx.status.set("tests", "error", f"Tests stopped ({summary})")
        job.stopped_status(result, f" after {index}/{total} ({summary})")
    elif failed:
        job.progress("tests", 0, 8, "error")
        ctx.status.set("tests", "error", f"Tests failed ({len(failed)}/{total}: {', '.join(failed)})")
        job.err(f"❌ {summary}; failed: {', '.join(failed)}")
        job.status("error", 1, f"{summary}; failed: {', '.join(failed)}")
    else:
        job.progress("tests", 8, 8, "complete")
        ctx.status.set("tests", "ok", "All tests passed")
        job.say(f"✅ All tests passed ({summary})")
        job.status("ok", 0, summary)
    ctx.reporter.heartbeat_now()

"""The agent's side of health-gated switches: Home Manager's gate, and the final report.

- Home Manager (Linux and macOS) has no root side: after ``home-manager switch`` the agent runs
  the checks itself (user units through ``systemctl --user``; on macOS unit checks are left out),
  with ``require_reconnect`` it registers with the dashboard again, and on failure it activates
  the previous Home Manager generation, picked by generation *number* (``-10-`` after ``-9-``;
  upstream sorted by name), and remembers the commit as bad for this host.
- NixOS: root decided (health/gate.py); ``result.json`` carries ``health``, ``rolled_back``,
  ``failed_checks`` and ``bad_commits``. The agent mirrors root's bad list (for ``status`` and the
  heartbeat) and makes the Tests/System compartments say what failed and that the host was
  rolled back. The final status message is root's error text, which says both.

Hooks: :func:`gate` and :func:`reflect` in ``commands/rebuild.finish_operation``,
:func:`before_switch` and :func:`failed_before` in ``commands/rebuild._switch``,
:func:`heartbeat_fields` in the heartbeat, :func:`status_lines` in ``nixfleet-agent status``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..ops.runner import Result
from ..visibility import record
from . import badlist, confirm

if TYPE_CHECKING:  # pragma: no cover
    from ..commands import Job
    from ..ops.journal import Operation
    from .checks import Check

FORCE_COMMANDS = ("force-rebuild", "force-update")  # the dashboard's way to say "force"


def _hm(job: Job) -> bool:
    return job.ctx.cfg.platform == "home-manager"


def _units_available() -> bool:
    return sys.platform != "darwin" and shutil.which("systemctl") is not None


def before_switch(job: Job, commit: str) -> str | None:
    """Home Manager, before ``home-manager switch``: the refusal text when ``commit`` is on the
    agent's own bad list (NixOS: root refuses, the agent only asks)."""
    health = job.ctx.cfg.health
    if not _hm(job) or not health.enable or not commit:
        return None
    entry = badlist.agent_list(job.ctx.cfg.state_dir).find(commit)
    if entry is None:
        return None
    if job.name in FORCE_COMMANDS:
        job.say(f"health: {commit[:7]} is on the bad list; switching anyway ({job.name})")
        return None
    return badlist.refusal_text(entry)


def failed_before(job: Job) -> list[str]:
    """Home Manager, right before the switch: the user units that had already failed, so the
    checks count only what the switch broke. Kept in the operation's journal record, not in
    memory: an agent restarted during its checks (health/agentside.gate runs again) still knows."""
    health = job.ctx.cfg.health
    if not (_hm(job) and health.enable and health.no_failed_units and _units_available()):
        return []
    from .checks import Runner

    before, _ = Runner(health, user_manager=True).failed_units()
    return sorted(before or ())


def gate(job: Job, op: Operation, result: Result) -> Result:
    """Home Manager: check the new generation; roll back and remember it when it fails."""
    health = job.ctx.cfg.health
    if not (_hm(job) and health.enable and op.action == "switch" and result.ok):
        return result
    from ..commands import rebuild
    from .checks import Outcome, Runner

    job.say("━━━ Health checks ━━━")
    started = time.time()
    extra: list[Check] = []
    if health.require_reconnect:
        job.ctx.reporter.request_reconnect()

        def registered(_timeout: float) -> Outcome:
            ok = confirm.last_registered() >= started
            return Outcome("reconnect", ok, "registered with the dashboard again" if ok else "not registered yet")
        extra.append(registered)
    units = _units_available()
    runner = Runner(health, user_manager=True, as_root=False, units_available=units)
    if units and health.no_failed_units:
        runner.baseline_failed = frozenset(op.failed_before)
    report = runner.run(time.monotonic() + health.grace_period, job.say, job.ctx.stop_event, extra=extra)
    bad = badlist.agent_list(job.ctx.cfg.state_dir)
    if report.healthy:
        job.say(f"health: all checks passed after {report.elapsed:.1f}s")
        if op.commit:
            bad.remove(op.commit)
        return result
    what = report.failed_text()
    if not health.rollback:
        return Result(exit_code=1, start_error=f"health: {what}; not rolled back (onFailure = report)")
    profiles = rebuild.hm_profiles_dir()
    current, _ = rebuild.hm_generations(profiles)
    prev = rebuild.previous_generation(profiles)
    if op.commit:
        bad.add(op.commit, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), what)
    short = op.commit[:7] or "this commit"
    if prev is None:
        return Result(exit_code=1, start_error=f"health: {what}; no previous Home Manager generation to roll back "
                                                f"to (current {current}); {short} is refused from now on")
    job.say(f"health: FAILED ({what}); activating Home Manager generation {prev} (current {current})")
    done = job.run([str(profiles / f"home-manager-{prev}-link" / "activate")])
    if not done.ok:
        return Result(exit_code=done.exit_code or 1, start_error=(
            f"health: {what}; rollback to Home Manager generation {prev} FAILED ({done.describe()})"))
    return Result(exit_code=1, start_error=(f"health: {what}; rolled back to Home Manager generation {prev}; "
                                            f"{short} is refused on this host until a newer commit or force"))


def reflect(job: Job, op: Operation, result: Result) -> None:
    """After the final status: the compartments and the agent's copy of the bad list."""
    fields = _result_fields(op) if op.launcher == "privileged" else {}
    entries = fields.get("bad_commits")
    if isinstance(entries, list):
        try:
            badlist.agent_list(job.ctx.cfg.state_dir).replace(badlist.validate({"version": 1, "commits": entries}))
        except (ValueError, OSError):
            pass
    outcome = fields.get("health")
    if outcome is None and _hm(job) and (result.start_error or "").startswith("health: "):
        outcome = "failed"
    if outcome != "failed":
        return
    failed = fields.get("failed_checks")
    record.note_health_failure(len(failed) if isinstance(failed, list) and failed else 1)  # metrics counters
    if fields.get("rolled_back") is True or (_hm(job) and "; rolled back to " in (result.start_error or "")):
        record.note_rollback()
    text = result.start_error or "health checks failed"
    job.ctx.status.set("system", "error", text[:500])
    job.ctx.status.set("tests", "error", "Health checks failed: " + text.removeprefix("health: ").split("; ")[0][:300])


def _result_fields(op: Operation) -> dict[str, Any]:
    try:
        doc = json.loads(Path(op.result_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def bad_commits(state_dir: Path) -> tuple[list[dict[str, str]], str]:
    bad = badlist.agent_list(state_dir)
    return [e.as_dict() for e in bad.load()], bad.problem


def heartbeat_fields(state_dir: Path) -> dict[str, object]:
    """An extra heartbeat field (the upstream dashboard ignores unknown fields)."""
    entries, _ = bad_commits(state_dir)
    return {"bad_commits": [e["commit"] for e in entries]} if entries else {}


def status_lines(state_dir: Path) -> list[str]:
    entries, problem = bad_commits(state_dir)
    lines = [f"bad commit (refused until a newer commit or force): {e['commit']} at {e['at']}: {e['reason']}"
             for e in entries]
    return lines + ([f"problem: {problem}"] if problem else [])

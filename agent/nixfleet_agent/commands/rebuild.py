"""``switch``, ``pull-switch``, ``rollback``, ``force-update``, ``force-rebuild`` - and finishing
an operation a previous agent process started.

Every system change runs as a detached operation (see ``operations``), so the rebuild survives the
agent being restarted or booted out by the very switch it runs. The final ``status`` is sent by
whichever agent process sees the result first, exactly once (the record is marked ``reported``).
After a successful switch the agent re-registers (the dashboard completes a switch only on a new
``register``), and exits with ``restart_exit_code`` only when its own installed package changed.

Per platform (``cfg.rebuild_command`` replaces the program, arguments stay):
  NixOS        ``[sudo -n] nixos-rebuild switch --flake <repo>#<host>`` (sudo only when not root
               and not using the privileged launcher); rollback ``nixos-rebuild switch --rollback``
  nix-darwin   ``[sudo -n] darwin-rebuild switch --flake <repo>#<host>``; rollback ``--rollback``
  Home Manager ``home-manager switch --flake <repo>#<host>``; rollback activates the previous
               generation picked *numerically* (``home-manager-11-link`` before ``-12-``), never the
               current one (upstream sorted lexically and re-activated the only generation).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..guard import agentside as guard
from ..health import agentside, confirm
from ..repo import lockupdate
from .. import nix
from ..ops import operations, transient
from .. import log as logmod
from ..kinds import Action, LaunchMode
from ..ops.runner import Result, signal_name
from . import Job, agentpkg, privileged_switch, sudo_n
from .pulling import post_validation, pull_steps
from ..visibility import record as visibility_record

_log = logmod.get("rebuild")

LABELS = {
    "switch": "Switch", "pull-switch": "Pull+Switch", "rollback": "Rollback",
    "force-update": "Force update", "force-rebuild": "Force rebuild",
}
SWITCH_LIKE = ("switch", "pull-switch", "force-update", "force-rebuild")


def _base(job: Job) -> list[str]:
    cfg = job.ctx.cfg
    argv = list(cfg.rebuild_command)
    if cfg.platform in ("nixos", "darwin") and not privileged_switch(cfg):
        return sudo_n(argv)
    return argv


def switch_argv(job: Job, refresh: bool = False) -> list[str]:
    return nix.rebuild(_base(job), "switch", f"{job.repo_path}#{job.ctx.cfg.hostname}", refresh=refresh)


def hm_profiles_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    primary = Path(state) / "nix/profiles"
    legacy = Path("/nix/var/nix/profiles/per-user") / os.environ.get("USER", "")
    if not (primary / "home-manager").exists() and (legacy / "home-manager").exists():
        return legacy
    return primary


_GEN_RE = re.compile(r"^home-manager-(\d+)-link$")


def hm_generations(profiles: Path) -> tuple[int | None, list[int]]:
    """(current generation, all generation numbers ascending) from the profile links."""
    try:
        gens = sorted(int(m.group(1)) for p in profiles.iterdir() if (m := _GEN_RE.match(p.name)))
    except OSError:
        return None, []
    current = None
    try:
        m = _GEN_RE.match(os.path.basename(os.readlink(profiles / "home-manager")))
        current = int(m.group(1)) if m else None
    except OSError:
        pass
    if current is None and gens:
        current = gens[-1]
    return current, gens


def previous_generation(profiles: Path) -> int | None:
    current, gens = hm_generations(profiles)
    older = [g for g in gens if current is not None and g < current]
    return older[-1] if older else None


def current_link(platform: str) -> Path:
    """What the running system is: the system profile (NixOS, nix-darwin) or Home Manager's."""
    return Path("/run/current-system") if platform in ("nixos", "darwin") else hm_profiles_dir() / "home-manager"


def _pre_system(platform: str) -> str:
    path = current_link(platform)
    return os.path.realpath(path) if path.exists() else ""


# ----- commands ------------------------------------------------------------------------------------


def switch(job: Job) -> None:
    _switch(job)


def pull_switch(job: Job) -> None:
    job.progress("pull", 0, 4, "in_progress")
    code = pull_steps(job)
    if code != 0:
        job.progress("pull", 0, 4, "error")
        if not job.stopped_status(Result(code)):
            job.status("error", code or 1, f"pull failed (exit {code})")
        job.ctx.reporter.heartbeat_now()
        return
    job.progress("pull", 4, 4, "complete")
    _switch(job)


def force_update(job: Job) -> None:
    job.say("🚀 Force update: pull, update flake inputs, rebuild without negative cache")
    job.say("━━━ Step 1/3: Git pull ━━━")
    code = pull_steps(job)
    if code != 0:
        if not job.stopped_status(Result(code)):
            job.status("error", code, "git pull failed")
        return
    agent_input = job.ctx.cfg.agent_input  # upstream: `nix flake update nixfleet`, the agent's input only
    job.say(f"━━━ Step 2/3: nix flake update {agent_input} ━━━")
    repo = job.ctx.repo
    cwd = job.repo_path
    problem = lockupdate.missing_input_error(repo, (agent_input,)) if repo is not None else None
    if problem:
        job.err(f"❌ {problem}")
        job.status("error", 1, f"no flake input {agent_input}")
        return
    if privileged_switch(job.ctx.cfg):
        # Root builds only published commits, never one this agent authored: it refreshes the lock
        # itself, in a throwaway work tree of the pulled commit once it has verified that commit.
        job.say(f"   root refreshes {agent_input} in flake.lock of {repo.head()[:7] if repo else '?'} and builds that")
        job.say("━━━ Step 3/3: Rebuild ━━━")
        _switch(job, refresh=True, update_lock=True)
        return
    res = job.run(nix.flake_update((agent_input,)), job.repo_env(), cwd)
    if not res.ok:
        if not job.stopped_status(res):
            job.status("error", res.exit_code or 1, "nix flake update failed")
        return
    job.say("━━━ Step 3/3: Rebuild ━━━")
    _switch(job, refresh=True)


def force_rebuild(job: Job) -> None:
    job.say("━━━ Rebuild (narinfo-cache-negative-ttl 0) ━━━")
    _switch(job, refresh=True)


def rollback(job: Job) -> None:
    cfg = job.ctx.cfg
    job.say("🔄 Rolling back to previous generation...")
    if cfg.platform == "home-manager":
        profiles = hm_profiles_dir()
        current, _ = hm_generations(profiles)
        prev = previous_generation(profiles)
        if prev is None:
            job.err(f"No previous generation found in {profiles} (current: {current if current is not None else 'none'})")
            job.ctx.status.set("system", "error", "Rollback failed: no previous generation")
            job.status("error", 1, "no previous generation")
            job.ctx.reporter.heartbeat_now()
            return
        job.say(f"   Activating generation {prev} (current {current})")
        argv = [str(profiles / f"home-manager-{prev}-link" / "activate")]
    else:
        argv = nix.rollback(_base(job))
    job.ctx.status.set("system", "working", "Rollback in progress...")
    op = _new_operation(job, "rollback", argv)
    result = launch_and_follow(job, op)
    if result is not None:
        finish_operation(job, op, result)


def _switch(job: Job, refresh: bool = False, update_lock: bool = False) -> None:
    repo = job.ctx.repo
    if repo is None or not (repo.path / "flake.nix").exists():
        why = (repo.last_error if repo is not None and repo.last_error else
               f"no flake.nix in {repo.path if repo is not None else job.ctx.cfg.repo_dir}")
        job.progress("system", 0, 3, "error")
        job.err(f"❌ Cannot switch: repository not ready ({why})")
        job.status("error", 1, f"repository not ready: {why}")
        return
    if guard.refused(job, privileged_switch(job.ctx.cfg)):  # pre-flight free space (root checks its own)
        return
    refusal = agentside.before_switch(job, repo.head())  # Home Manager's bad list (NixOS: root's)
    if refusal:
        job.err(f"❌ {refusal}")
        job.status("error", 2, refusal)
        return
    job.progress("system", 0, 3, "in_progress")
    job.ctx.status.set("system", "working", "Switch in progress...")
    # the privileged root unit builds its own argv: it adds the same --option when asked to refresh
    op = _new_operation(job, "switch", switch_argv(job, refresh), refresh=refresh, update_lock=update_lock)
    op.failed_before = agentside.failed_before(job)  # Home Manager's checks ignore these
    job.say(f"$ {' '.join(op.argv)}" if op.launcher == "detached" else
            f"requesting privileged switch of {op.commit[:7]} for {op.flake_attr}")
    result = launch_and_follow(job, op)
    if result is not None:
        finish_operation(job, op, result)


# ----- operations ----------------------------------------------------------------------------------


def _new_operation(job: Job, action: str, argv: list[str], refresh: bool = False,
                   update_lock: bool = False) -> operations.Operation:
    cfg = job.ctx.cfg
    # A root side exists under the NixOS module (path unit) and the nix-darwin module (launchd daemon);
    # Home Manager always detaches.
    launcher = LaunchMode.PRIVILEGED if privileged_switch(cfg) else LaunchMode.DETACHED
    log_path, result_path = operations.paths_for(cfg.state_dir, cfg.privileged_dir, job.op_id, launcher)
    # detached: in a transient user unit where a user manager answers (ops/transient.py), so no
    # restart of the agent's own unit can kill it; else in a session of its own
    why = transient.why_unavailable(Path(cfg.state_dir)) if launcher == LaunchMode.DETACHED else "privileged"
    unit = operations.switch_unit(job.op_id) if why is None else ""
    if launcher == LaunchMode.DETACHED:
        _log.info("switch_launcher", id=job.op_id, unit=unit or "-", reason=why or "user manager answers")
    repo = job.ctx.repo
    commit = repo.head() if repo is not None else ""
    return operations.Operation(
        id=job.op_id, command=job.name, action=Action(action), argv=argv, launcher=launcher,
        log_path=str(log_path), result_path=str(result_path),
        cwd=str(repo.path) if repo is not None else "",
        commit=commit,
        pre_generation=commit[:7],
        pre_system=_pre_system(cfg.platform), agent_before=agentpkg.fingerprint(cfg.platform),
        flake_attr=cfg.hostname, refresh=refresh, update_lock=update_lock, unit=unit,
    )


def launch_and_follow(job: Job, op: operations.Operation) -> Result | None:
    """Record, launch, follow. None when the agent shuts down first (the next agent reports)."""
    ctx = job.ctx
    state_dir = Path(ctx.cfg.state_dir)
    job.log.write(f"# operation {op.id}: {' '.join(op.argv)}")
    if op.unit:
        job.say(f"   in the transient unit {op.unit} (it survives restarts of the agent)")
    job.close_log()  # the wrapper appends to the same file from here on
    if op.launcher == "detached":
        try:
            operations.save_offset(state_dir, op, Path(op.log_path).stat().st_size)
        except OSError:
            pass
    if op.launcher == "privileged" and not op.commit:
        job.err("❌ Cannot request a privileged switch: the repository has no commit")
        return Result(exit_code=1, start_error="repository has no commit")
    operations.save(state_dir, op)  # on disk before it starts
    cap = ctx.cfg.op_log_max_mb * 1024 * 1024
    launcher: operations.Launcher = (operations.PrivilegedLauncher(state_dir) if op.launcher == "privileged"
                                     else transient.TransientLauncher(cap) if op.unit
                                     else operations.DetachedLauncher(cap))
    try:
        op.pid = launcher.start(op)
    except OSError as exc:
        msg = f"cannot start {op.launcher} switch: {exc.strerror or exc}"
        job.err(msg)
        return Result(exit_code=126, start_error=msg)
    operations.save(state_dir, op)
    _log.info("operation_started", id=op.id, command=op.command, launcher=op.launcher, pid=op.pid)
    return follow_operation(job, op)


def follow_operation(job: Job, op: operations.Operation) -> Result | None:
    ctx = job.ctx
    job.tracker.track(op.pid, detached=True, root_op=op.id if op.launcher == "privileged" else None)
    request = operations.request_path(ctx.cfg.state_dir) if op.launcher == "privileged" else None
    if op.launcher == "privileged":  # root's log lives elsewhere: keep a copy in ours
        def emit(line: str) -> None:
            job.say(line)
    else:  # the wrapper writes our log file itself
        def emit(line: str) -> None:
            ctx.reporter.output(job.name, line, "stdout")
    confirmer = confirm.start(job, op)  # require_reconnect: root waits for our new registration
    try:
        result = operations.follow(Path(ctx.cfg.state_dir), op, emit, ctx.stop_event,
                                   killed_by=job.tracker.sent_signal, request_path=request,
                                   timeout=ctx.cfg.privileged_timeout)
    finally:
        job.tracker.track(None)
        if confirmer is not None:
            confirmer.stop()
    if op.pid and op.launcher == "detached" and not op.unit:
        try:  # reap our own wrapper (it exits right after writing the result)
            os.waitpid(op.pid, 0)
        except ChildProcessError:
            pass
    return result


def resume_operation(job: Job, op: operations.Operation) -> None:
    """A previous agent process started ``op``: stream the rest and report it exactly once."""
    note = f"↻ Agent restarted during {op.command} ({op.id}); resuming"
    if op.launcher == "detached":  # our log is the wrapper's, which the follower streams: it arrives once
        job.log.write(note, "stdout")
    else:
        job.say(note)
    result = operations.read_result(Path(op.result_path))
    if result is None and operations.interrupted_by_reboot(op):
        result = Result(exit_code=1, start_error=f"the machine rebooted during {op.command}; "
                                                 "it left no result, its outcome is unknown")
    if result is None:
        job.progress("system", 0, 3, "in_progress")
        job.ctx.status.set("system", "working", "Switch in progress..." if op.action == "switch" else "Rollback in progress...")
        result = follow_operation(job, op)
        if result is None:
            return
    else:  # finished while no agent watched: send what nobody streamed
        operations.follow(Path(job.ctx.cfg.state_dir), op, lambda l: job.ctx.reporter.output(job.name, l, "stdout"),
                          job.ctx.stop_event)
    finish_operation(job, op, result)


def finish_operation(job: Job, op: operations.Operation, result: Result) -> None:
    ctx = job.ctx
    result = agentside.gate(job, op, result)  # Home Manager: checks, and rollback on failure
    label = LABELS.get(op.command, op.command)
    stopped = job.tracker.sent_signal() is not None
    restart, why = (agentpkg.restart_needed(ctx.cfg.platform, op.agent_before) if result.ok else (False, ""))
    if result.ok:
        note = guard.result_note(op)  # root's: boot instead of switch (inhibitors), retention
        if op.action == "rollback":
            ctx.status.set("system", "ok", "Rollback successful (exit 0)")
            ctx.status.set("tests", "outdated", "Tests not run — run Test to verify system after rollback")
        else:
            job.progress("system", 3, 3, "complete")
            post_validation(job, "pull-switch" if op.command == "pull-switch" else "switch")
            ctx.status.set("system", "ok", f"{label} successful (exit 0)" + (f": {note}" if note else ""))
            ctx.status.set("tests", "outdated", "Tests not run — run Test to verify system")
        if restart:
            job.say(f"♻️  {why}: the agent restarts (exit {ctx.cfg.restart_exit_code}) to run the new version")
        job.status("ok", 0, note or ("force update complete" if op.command == "force-update" else ""))
    else:
        if op.action != "rollback":
            job.progress("system", 0, 3, "error")
        if result.start_error:
            job.err(f"❌ {result.start_error}")
        if stopped:
            ctx.status.set("system", "error", f"{label} stopped ({result.describe()})")
            job.stopped_status(result)
        else:
            how = f"exit {result.exit_code}" + (f", {signal_name(result.signal)}" if result.signal else "")
            ctx.status.set("system", "error", f"{label} failed ({how})")
            job.err(f"❌ {label} failed ({result.describe()})")
            job.status("error", result.exit_code or 1, result.start_error or f"{label.lower()} failed ({result.describe()})")
    # The status is journaled on disk before it is queued (link/journal.py) and stays there until the
    # dashboard confirmed it, so from here the journal - not this record - owns its delivery: marked
    # at once, a restart neither loses it nor reports it a second time from the record.
    agentside.reflect(job, op, result)  # compartments say what failed; root's bad list mirrored
    operations.mark_reported(Path(ctx.cfg.state_dir), op, ctx.cfg.privileged_dir)
    visibility_record.finish(ctx.status, op.action, op.commit, result.ok)  # issue 16: drift, metrics
    _log.info("operation_reported", id=op.id, command=op.command, exit_code=result.exit_code)
    ctx.reporter.heartbeat_now()
    if not result.ok or ctx.stop_event.is_set():
        return
    _log.info("post_switch", restart=restart, reason=why)
    if restart:
        ctx.reporter.request_exit(ctx.cfg.restart_exit_code)
    elif op.command in SWITCH_LIKE:
        ctx.reporter.request_reconnect()

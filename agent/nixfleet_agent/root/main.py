"""``nixfleet-agent-privileged``: run one request of the agent as root (started by the path unit).

The order of trust, for a build (``switch``):

1. the request file alone (``request``): allowlisted action, a 40-hex commit, this host's flake
   attribute (root's ``--flake-attr``, not the agent's choice);
2. root's own clone (``source``): fetched from ``--repo-url`` now; the commit must be on the branch;
3. with signers configured (``verify``): the commit's signature, and no step back behind the last
   commit root deployed;
4. ``update_lock`` (force-update): root's own lock refresh of that commit (``lockrefresh``);
5. ``nixos-rebuild <action> --flake git+file://<root clone>?ref=<branch>&rev=<commit>#<attr>``, or on
   nix-darwin (``--darwin-rebuild``, started by the root launchd daemon) ``darwin-rebuild`` with the
   same arguments: the same rules for both, only the program and the reboot command differ.

A refusal at any step is written to the request's ``result.json`` as ``"<rule>: <why>"`` (exit
code 2), which the agent reports as the command's error. Rollback and reboot build nothing.
Results are for the requesting uid only (``results``) and pruned to the newest ``--keep``.
Every accepted request ends with a result: a started marker and ``--finalize`` for a run that
was killed (``lifecycle``), the overall deadline and the agent's cancel request (``watch``).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .. import log, nix
from ..config import DEFAULT_AGENT_INPUT
from ..repo import gitenv
from ..guard import rootside
from ..health import gate, settings as health_settings
from . import lifecycle, lockrefresh, options, recovery, results, source, verify, watch
from .request import BUILD_ACTIONS, REJECTED_EXIT, Request, RequestError, parse_request, read_request

_log = log.get("privileged")
_BRANCH = re.compile(r"[A-Za-z0-9._/-]{1,200}")


@dataclass
class Settings:
    out_dir: Path
    state_dir: Path
    nixos_rebuild: str = "nixos-rebuild"  # or darwin-rebuild: the system's rebuild program
    systemctl: str = "systemctl"
    darwin: bool = False  # nix-darwin: reboot with shutdown(8), there is no systemctl
    shutdown: str = "/sbin/shutdown"
    nix: str = "nix"
    flake_attr: str = ""
    agent_input: str = DEFAULT_AGENT_INPUT
    keep: int = results.KEEP
    policy: verify.Policy = verify.Policy()
    guard: rootside.RootGuard = field(default_factory=rootside.RootGuard)  # pre-flight, inhibitors, retention
    health: health_settings.HealthSettings = health_settings.DISABLED  # [health] of --config
    confirm: Path | None = None  # the agent's confirmation file (next to the request)
    nix_env: str = "nix-env"
    system_profile: Path = gate.SYSTEM_PROFILE
    health_interval: float = 2.0
    timeout: float = watch.DEFAULT_TIMEOUT  # overall deadline of one run (trusted config, never the request)
    cancel_path: Path | None = None  # <request dir>/cancel.json: the agent's stop/kill (watch.py)


class Handler:
    """Runs one request: owns the output layout, the checks and the child processes."""

    def __init__(self, settings: Settings, src: source.RootClone | source.LegacySource,
                 env: Mapping[str, str]) -> None:
        self.s = settings
        self.src = src
        self.env = dict(env)  # for nixos-rebuild and nix: the same git hygiene as root's own git
        self.results = results.Results(settings.out_dir, settings.keep)
        self.deployed = verify.Deployed(settings.state_dir / "deployed.json")
        self.gate = gate.Gate(settings.health, recovery.bad_list(settings.state_dir),
                              settings.confirm or Path("/nonexistent/confirm.json"), profile=settings.system_profile,
                              nix_env=settings.nix_env, systemctl=settings.systemctl, darwin=settings.darwin,
                              interval=settings.health_interval, state_dir=settings.state_dir)
        self.system = recovery.system(settings.system_profile, settings.guard.current_system,
                                      nix_env=settings.nix_env, systemctl=settings.systemctl, darwin=settings.darwin,
                                      env=self.env)
        self._op_dir = settings.out_dir
        self.watch: watch.Watch | None = None

    def reject(self, err: RequestError, owner: int) -> int:
        _log.warn("rejected", id=err.request_id, field=err.field, error=str(err))
        op_dir = self.results.new_dir(err.request_id) if err.request_id else None
        doc: dict[str, object] = {"exit_code": REJECTED_EXIT, "error": str(err), "finished_at": results.now()}
        if op_dir is None:
            if err.request_id:
                doc["id"] = err.request_id
            self.results.ensure()
            self.results.write_json(self.s.out_dir, "rejected.json", doc, owner)
            return REJECTED_EXIT
        with self.results.open_log(op_dir, owner) as out:
            out.write(f"nixfleet-agent-privileged: request rejected: {err}\n".encode())
        self.results.write_json(op_dir, "result.json", {"id": err.request_id, "action": err.action, **doc}, owner)
        self.results.prune(op_dir.name)
        return REJECTED_EXIT

    def run(self, req: Request) -> int:
        if req.action in BUILD_ACTIONS and not self.s.flake_attr:
            # fail closed: without its own host name root cannot tell this host's configuration from
            # another's, and the request's flake_attr is the agent's word
            return self.reject(RequestError("flake_attr", "this host's name is not configured (hostname in "
                                            "--config, or --flake-attr); root builds only this host's "
                                            "configuration", req.id, req.action), req.owner)
        if req.flake_attr and req.flake_attr != self.s.flake_attr:
            return self.reject(RequestError("flake_attr", f"{req.flake_attr} is not this host's configuration "
                                            f"({self.s.flake_attr})", req.id, req.action), req.owner)
        op_dir = self.results.new_dir(req.id)
        if op_dir is None:
            self.results.write_json(self.s.out_dir, "rejected.json", {
                "id": req.id, "exit_code": REJECTED_EXIT, "finished_at": results.now(),
                "error": f"id: {req.id} was already used"}, req.owner)
            _log.warn("rejected", id=req.id, field="id", error="already used")
            return REJECTED_EXIT
        self._op_dir = op_dir
        self.watch = watch.Watch(req.id, self.s.cancel_path, self.s.timeout)
        self.gate.poll = self.watch.check  # a stop/kill during the grace period ends the wait at once
        lifecycle.begin(self.results, op_dir, req, self.s.state_dir, self.s.timeout)
        recovered = None
        with self.results.open_log(op_dir, req.owner) as out:
            try:
                # a gate a hard reset interrupted (no ExecStopPost= ran): undone before anything else
                recovery.recover_into_results(self.s.out_dir, self.s.state_dir, self.system, None, out, req.id)
                self.watch.check()  # a stop/kill that came before root picked the request up
                exit_code, error = self._execute(req, out)
            except source.Refusal as refusal:
                exit_code, error = REJECTED_EXIT, str(refusal)
                out.write(f"nixfleet-agent-privileged: refused: {refusal}\n".encode())
                _log.warn("refused", id=req.id, rule=refusal.rule, commit=req.commit, error=error)
            except watch.Ended as ended:
                exit_code, error = ended.exit_code, str(ended)
                out.write(f"nixfleet-agent-privileged: {ended}\n".encode())
                # ended while the gate waited or rolled back: its record is still there; going back
                # is what a stop means, but the commit did not fail a check: it is not remembered
                recovered = recovery.recover_into_results(self.s.out_dir, self.s.state_dir, self.system, str(ended),
                                                          out, req.id, remember=False)
        if self.s.darwin and exit_code not in (0, REJECTED_EXIT) and not error:
            error = _user_agent_abort(op_dir / "output.log")
        doc: dict[str, object] = {"id": req.id, "action": req.action, "exit_code": exit_code,
                                  "finished_at": results.now()}
        if error:
            doc["error"] = error
        doc.update(self.s.guard.result_fields())  # activation, inhibitors, notes (guard/rootside.py)
        doc.update(self.gate.fields)  # health, rolled_back, failed_checks, bad_commits (health/gate.py)
        if recovered is not None:
            doc.update(recovered.fields, error=recovered.error)
        self.results.write_json(op_dir, "result.json", doc, req.owner)
        lifecycle.end(self.s.state_dir)
        self.results.prune(req.id)
        _log.info("finished", id=req.id, action=req.action, exit_code=exit_code, error=error or None)
        return 0 if exit_code == 0 else 1

    def _execute(self, req: Request, out: BinaryIO) -> tuple[int, str]:
        def stream(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> int:
            return self._spawn(argv, env, out, cwd)[0]

        if req.action == "rollback":
            return self._run(nix.rollback([self.s.nixos_rebuild]), out)
        if req.action not in BUILD_ACTIONS:
            return self._run(nix.reboot(darwin=self.s.darwin, systemctl=self.s.systemctl, shutdown=self.s.shutdown), out)
        self.s.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.s.guard.check_space(out)  # pre-flight free space: refused before anything is fetched
        self.gate.refuse_bad(req.commit, req.force, out)
        self.src.prepare(req.commit, stream)
        if self.s.policy.enabled:
            signer = verify.check_signature(self.src.path, self.src.env, req.commit, self.s.policy,
                                            self.s.state_dir / "work")
            out.write(f"nixfleet-agent-privileged: {req.commit} is signed by {signer}\n".encode())
            verify.check_not_backwards(self.src, req.commit, self.deployed.commit())
        build, ref = req.commit, ""
        if req.update_lock:
            if not isinstance(self.src, source.RootClone):
                raise source.Refusal("update_lock", "root refreshes a lock only in its own clone (repoUrl), "
                                                    "not in a legacy configRepo checkout")
            build, ref = lockrefresh.refresh(self.src, req.commit, self.s.agent_input,
                                             self.s.state_dir / "work" / req.id, stream, nix_program=self.s.nix,
                                             host=socket.gethostname(), env=self.env)
            what = "lock refreshed by root" if build != req.commit else "lock unchanged"
            out.write(f"nixfleet-agent-privileged: building {build} ({what})\n".encode())
        flake = self.src.flake_ref(build, self.s.flake_attr, ref)
        rebuild = nix.rebuild([self.s.nixos_rebuild], req.action, flake, refresh=req.refresh)

        def run(argv: list[str]) -> tuple[int, str]:
            # the gate's activation step is the guard's rebuild (it may turn switch into boot and
            # keeps generations after it); the gate's own rollback steps run as they are
            if argv == rebuild:
                return self.s.guard.rebuild(self.s.nixos_rebuild, req.action, flake, req.refresh, out, self._run,
                                            self.env)
            return self._run(argv, out)

        code, error = self.gate.switch(
            req.commit, req.id, req.owner, rebuild, run, out,
            lambda doc: self.results.write_json(self._op_dir, "health.json", doc, req.owner),
            activated=lambda: self.s.guard.result_fields().get("activation") != "boot")
        if code == 0:
            self.deployed.record(req.commit, build, req.action, results.now())
            self.s.guard.after_success(out, self._run)
        return code, error

    def _run(self, argv: list[str], out: BinaryIO) -> tuple[int, str]:
        _log.info("starting", argv=" ".join(argv))
        out.write(f"nixfleet-agent-privileged: running {' '.join(argv)}\n".encode())
        return self._spawn(argv, self.env, out)

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str], out: BinaryIO,
               cwd: Path | None = None) -> tuple[int, str]:
        """Run with output going straight to the log file: streamed, nothing buffered here; ended
        (``watch.Ended``) at the deadline or on the agent's cancel, which is also checked before
        each step starts."""
        if self.watch is not None:
            self.watch.check()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=dict(env), cwd=str(cwd or "/"), start_new_session=True)
        except OSError as exc:
            message = f"cannot start {argv[0]}: {exc.strerror or exc}"
            out.write(f"nixfleet-agent-privileged: {message}\n".encode())
            return 127, message
        code = self.watch.wait(proc) if self.watch is not None else proc.wait()
        return (128 - code, "") if code < 0 else (code, "")


_USER_SERVICE = re.compile(r"(?:reloading|creating) user service (\S+)")


def _user_agent_abort(output: Path) -> str:
    """nix-darwin#1758: activation reloads user LaunchAgents through ``launchctl asuser``, and when
    the primary user's GUI domain cannot be reached that ``load`` aborts the rest of the activation.
    When the failed run's output ends there, say so instead of a bare exit code."""
    try:
        with open(output, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            lines = [line for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines[-5:]):
        match = _USER_SERVICE.search(line)
        if match:
            return (f"darwin-rebuild: activation stopped while loading the user LaunchAgent {match.group(1)} "
                    "(nix-darwin#1758: the primary user's GUI domain was not reachable); the system was not "
                    "fully activated; log in as system.primaryUser and switch again")
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = options.parser().parse_args(argv)
    log.setup(args.log_level)
    os.umask(0o077)
    if args.finalize:
        if not (args.out_dir.is_absolute() and (args.state_dir is None or args.state_dir.is_absolute())):
            return options.bad("out-dir", "must be an absolute path")
        state_dir = args.state_dir or args.out_dir.parent / "root"
        system = recovery.system(Path(args.system_profile), args.current_system, nix_env=args.nix_env,
                                 systemctl=args.systemctl, darwin=args.darwin_rebuild is not None, env=os.environ)
        try:  # stopped during a gated switch: undone now (see health/pending.py)
            recovery.recover_into_results(args.out_dir, state_dir, system,
                                          f"root was stopped ({lifecycle.describe_end(os.environ)})")
        except OSError as exc:
            _log.error("recovery-failed", error=f"{exc.filename or ''}: {exc.strerror or exc}")
        return lifecycle.finalize(args.out_dir, state_dir, os.environ)
    problem = options.apply_config(args)
    if problem:
        return _unconfigured(args, problem)
    paths = ("request", "out_dir", "state_dir", "legacy_repo", "ssh_key", "known_hosts", "allowed_signers",
             "openpgp_keys", "config")
    for name in paths:
        value = getattr(args, name)
        if value is not None and not value.is_absolute():
            return options.bad(name.replace("_", "-"), "must be an absolute path")
    timeout = watch.DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    if type(timeout) is not int or timeout < 1:
        return _unconfigured(args, f"privileged_timeout: must be a positive number of seconds (got {timeout!r})")
    if not _BRANCH.fullmatch(args.branch) or args.branch.startswith(("-", "/")) or ".." in args.branch:
        return options.bad("branch", f"not a branch name: {args.branch!r}")
    state_dir = args.state_dir or args.out_dir.parent / "root"
    for name in ("allowed_signers", "openpgp_keys", "known_hosts"):
        value = getattr(args, name)
        if value is not None and not value.is_file():
            return options.bad(name.replace("_", "-"), f"{value} does not exist")
    settings = Settings(out_dir=args.out_dir, state_dir=state_dir,
                        nixos_rebuild=args.darwin_rebuild or args.nixos_rebuild or "nixos-rebuild",
                        darwin=args.darwin_rebuild is not None, systemctl=args.systemctl, shutdown=args.shutdown, nix=args.nix, flake_attr=args.flake_attr,
                        agent_input=args.agent_input, keep=args.keep,
                        policy=verify.Policy(args.allowed_signers, args.openpgp_keys, args.gpg, args.ssh_keygen),
                        health=getattr(args, "health", health_settings.DISABLED), confirm=args.request.parent / "confirm.json",
                        nix_env=args.nix_env, system_profile=Path(args.system_profile), health_interval=args.health_interval,
                        timeout=timeout, cancel_path=args.request.parent / "cancel.json")
    guard = rootside.load(args, darwin=settings.darwin)
    if isinstance(guard, str):
        return _unconfigured(args, guard)
    settings.guard = guard
    try:
        src = _source(args, state_dir)
    except gitenv.KeyFileError as exc:
        return _unconfigured(args, str(exc))
    handler = Handler(settings, src, src.env)
    owner = _owner_of(args.request)  # before reading: reading removes a linked privileged/
    try:
        try:
            got = read_request(args.request)
            if got is None:
                _log.info("no-request", path=str(args.request))
                return 0
            data, owner = got
            req = parse_request(data).by(owner)
        except RequestError as err:
            return handler.reject(err, owner)
        return handler.run(req)
    except OSError as exc:  # e.g. the output directory is not writable: say so, no traceback
        _log.error("failed", error=f"{exc.filename or ''}: {exc.strerror or exc}")
        return 1


def _source(args: argparse.Namespace, state_dir: Path) -> source.RootClone | source.LegacySource:
    if args.legacy_repo is not None:
        return source.LegacySource(args.legacy_repo, os.environ)
    key = args.ssh_key
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if key is None and creds and Path(creds, "ssh-key").is_file():
        key = Path(creds, "ssh-key")
    if key is not None:
        gitenv.check_key_file(key)
    known = args.known_hosts or state_dir / "known_hosts"
    ssh = gitenv.ssh_command(key, known, args.known_hosts is not None, 30)
    env = source.git_env(os.environ, ssh=ssh)
    return source.RootClone(state_dir / "repo", args.repo_url, args.branch, env)


def _unconfigured(args: argparse.Namespace, problem: str) -> int:
    """Root cannot work out what to build: say so to the log and to the agent, and still consume
    the request, so the path unit does not start us again and again for it."""
    _log.error("bad-argument", option="config", error=problem)
    if not (args.request.is_absolute() and args.out_dir.is_absolute()):
        return REJECTED_EXIT
    owner = _owner_of(args.request)
    try:
        got = read_request(args.request)
    except RequestError:
        got = None
    try:
        out = results.Results(args.out_dir, args.keep)
        out.ensure()
        out.write_json(args.out_dir, "rejected.json", {
            "exit_code": REJECTED_EXIT, "error": f"config: {problem}", "finished_at": results.now(),
            **({"id": _request_id(got[0])} if got else {})}, owner)
    except OSError as exc:
        _log.error("failed", error=f"{exc.filename or ''}: {exc.strerror or exc}")
    return REJECTED_EXIT


def _request_id(data: bytes) -> str:
    try:
        return parse_request(data).id
    except RequestError as err:
        return err.request_id or ""


def _owner_of(request: Path) -> int:
    """Who a refusal without a readable request is for: the owner of the request's directory."""
    try:
        return os.stat(request.parent, follow_symlinks=False).st_uid
    except OSError:
        return os.geteuid()


if __name__ == "__main__":
    sys.exit(main())

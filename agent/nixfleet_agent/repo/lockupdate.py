"""``update``: real ``nix flake update`` in the isolated clone, commit ``flake.lock``, push it.

Several hosts of a fleet may run ``update`` at the same moment against the same branch. Instead of
merging or rebasing (which can leave a half-resolved lock file behind), a rejected push throws the
local attempt away: fetch, reset to the remote, update again from there, with jittered backoff so
the hosts spread out, for a bounded number of attempts. The remote history stays linear, and a
host that finds the lock already updated by someone else reports "already up to date".

Hosts that cannot push (HTTPS remote without credentials, read-only deploy key, read-only
``git://`` remote) are told so plainly and the result asks the caller to pull + switch instead,
which is what the upstream v1 agent did for HTTPS remotes.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import gitenv
from .. import log, nix
from .gitenv import RunFn
from .clone import Repo, RepoError
from ..config import AGENT_INPUT_HINT

_log = log.get("lockupdate")


_NO_ACCESS_MARKERS = (
    "permission denied",
    "authentication failed",
    "could not read username",
    "terminal prompts disabled",
    "access denied",
    "read only",
    "read-only",
    "service not enabled",
    "not permitted",
    "not allowed",
    "unauthorized",
    "forbidden",
    "returned error: 401",
    "returned error: 403",
)


# "[remote rejected]" reasons that mean "someone else was faster", not "you may not push".
_RACE_MARKERS = ("lock", "failed to update ref", "incorrect old value", "stale info", "fetch first", "non-fast-forward")


@dataclass(frozen=True)
class InputChange:
    name: str
    old: str  # short rev (or narHash prefix), "(none)" when the input is new
    new: str  # "(removed)" when the input is gone

    def line(self) -> str:
        return f"• {self.name}: {self.old} → {self.new}"


@dataclass
class UpdateResult:
    """What happened, for the command to report. ``exit_code`` 0 unless the update itself failed."""

    outcome: str  # pushed | up-to-date | no-push-access | updated-locally | failed
    message: str
    exit_code: int = 0
    attempts: int = 0
    changes: list[InputChange] = field(default_factory=list)
    commit: str = ""

    @property
    def needs_pull_switch(self) -> bool:
        """True when the host could not push: the caller should pull + switch instead."""
        return self.outcome == "no-push-access"


def _input_id(node: dict[str, Any]) -> str:
    locked = node.get("locked") or {}
    rev = locked.get("rev")
    if isinstance(rev, str):
        return rev[:7]
    nar = locked.get("narHash")
    if isinstance(nar, str):
        return nar.split("-", 1)[-1][:12]
    return "?"


def lock_changes(old_text: str | None, new_text: str | None) -> list[InputChange]:
    """Inputs whose locked revision differs between two ``flake.lock`` texts (unparsable = empty)."""

    def nodes(text: str | None) -> dict[str, str]:
        try:
            data = json.loads(text) if text else {}
            root = data.get("root", "root")
            return {name: _input_id(node) for name, node in data.get("nodes", {}).items() if name != root}
        except (ValueError, AttributeError):
            return {}

    old, new = nodes(old_text), nodes(new_text)
    changes = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name, "(none)"), new.get(name, "(removed)")
        if before != after:
            changes.append(InputChange(name, before, after))
    return changes


def commit_message(changes: list[InputChange], host: str) -> str:
    names = [c.name for c in changes]
    subject = f"flake.lock: update {', '.join(names)}" if 0 < len(names) <= 3 else f"flake.lock: update {len(names)} inputs"
    if not names:
        subject = "flake.lock: update"
    body = "\n".join(c.line() for c in changes)
    return f"{subject}\n\nUpdated by nixfleet-agent on {host}:\n{body}\n"


def classify_push(result: gitenv.GitResult) -> str:
    """``ok`` | ``rejected`` (remote moved on) | ``no-access`` | ``failed`` (network, other)."""
    if result.ok:
        return "ok"
    refs = [line for line in result.stdout.splitlines() if line.startswith("!")]
    if any("[rejected]" in line for line in refs):
        return "rejected"
    remote = [line.lower() for line in refs if "[remote rejected]" in line]
    if any(marker in line for line in remote for marker in _RACE_MARKERS):
        return "rejected"  # another push updated the ref at the same moment
    if remote:
        return "no-access"  # a hook, branch protection or permission on the server said no
    text = (result.stdout + "\n" + result.stderr).lower()
    if any(marker in text for marker in _NO_ACCESS_MARKERS):
        return "no-access"
    return "failed"


def _read_lock(repo: Repo) -> str | None:
    try:
        return (repo.path / "flake.lock").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def static_push_problem(repo: Repo) -> str | None:
    """Known without trying: an HTTP(S) remote with no credentials in the URL and no credential
    helper cannot push, and trying would only produce an authentication error later."""
    if not gitenv.is_http_url(repo.url) or gitenv.url_has_credentials(repo.url):
        return None
    helper = repo.git("config", "--get-all", "credential.helper")
    if helper.ok and helper.stdout.strip():
        return None
    return f"repo_url {gitenv.redact(repo.url)} is HTTPS without credentials"


def update(
    repo: Repo,
    run: RunFn,
    *,
    stop: threading.Event | None = None,
    attempts: int | None = None,
    backoff_base: float = 1.0,
    backoff_cap: float = 30.0,
    rand: Callable[[], float] = random.random,
    emit: Callable[[str, str], None] | None = None,
    inputs: Sequence[str] = (),
    track: Callable[[int | None], None] | None = None,
) -> UpdateResult:
    """Update, commit and push ``flake.lock``; see the module docstring for the retry policy.

    ``emit`` (line, stream) receives the notes (changed inputs, rejected pushes, fallback reason).
    ``inputs`` limits the update to those flake inputs (``bump-flake``: only the agent input, ``agent_input``).
    ``track`` hears the PID of each ``git push`` (and None after), so ``stop`` can end a hung push.
    """
    with repo.emitting(emit):
        try:
            if not repo.isolated:
                return _legacy_update(repo, run, inputs)
            return _isolated_update(repo, run, inputs, stop, attempts or repo.cfg.update_attempts, backoff_base,
                                    backoff_cap, rand, track)
        except RepoError as exc:
            repo.emit(f"error: {exc}", "stderr")
            return UpdateResult("failed", str(exc), 1)


def _root_inputs(repo: Repo) -> list[str] | None:
    """The inputs ``flake.lock`` gives the fleet flake, or None without a readable lock."""
    try:
        lock = json.loads(_read_lock(repo) or "{}")
        return list(lock["nodes"][lock.get("root", "root")].get("inputs", {}))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # no readable lock yet: nix itself will say what is wrong


def missing_inputs(repo: Repo, inputs: Sequence[str]) -> list[str]:
    """Inputs the flake does not have: Nix only warns about ``--update-input <unknown>`` and exits
    0, which would report a bump that did nothing as "already up to date"."""
    present = _root_inputs(repo) if inputs else None
    return [] if present is None else [name for name in inputs if name not in present]


def missing_input_error(repo: Repo, inputs: Sequence[str]) -> str | None:
    """The one-line error for bump-flake and force-update when the fleet flake lacks the agent's
    input, or None. It names the module option and the TOML key: the input name is the fleet
    flake's choice, which the agent cannot know (upstream's agent input was called ``nixfleet``)."""
    missing = missing_inputs(repo, inputs)
    if not missing:
        return None
    present = ", ".join(_root_inputs(repo) or []) or "none"
    names = ", ".join(f"'{name}'" for name in missing)
    return f"flake.lock has no input {names} (it has: {present}): {AGENT_INPUT_HINT}"


def _nix_update(repo: Repo, run: RunFn, inputs: Sequence[str]) -> int:
    problem = missing_input_error(repo, inputs)
    if problem:
        repo.emit(f"error: {problem}", "stderr")
        return 1
    argv = nix.flake_update(inputs)
    code = run(argv, repo.git_env(), repo.path)
    if code != 0:
        repo.emit(f"error: {' '.join(argv[3:])} failed (exit {code})", "stderr")
    return code


def _lock_dirty(repo: Repo) -> bool:
    status = repo.git("status", "--porcelain", "--", "flake.lock")
    return bool(status.stdout.strip())


def _commit_lock(repo: Repo, message: str, env: Mapping[str, str]) -> gitenv.GitResult:
    """Commit ``flake.lock`` alone, as the configured author (``env``), without the clone's hooks."""
    result = repo.git("add", "--", "flake.lock", env=env)
    if result.ok:
        result = repo.git("commit", "-q", "--no-verify", "-m", message, env=env)
    return result


def _legacy_update(repo: Repo, run: RunFn, inputs: Sequence[str]) -> UpdateResult:
    old = _read_lock(repo)
    if _nix_update(repo, run, inputs) != 0:
        return UpdateResult("failed", "nix flake update failed", 1, 1)
    changes = lock_changes(old, _read_lock(repo))
    if not changes:
        return UpdateResult("up-to-date", "flake.lock already up to date", 0, 1)
    for change in changes:
        repo.emit(change.line())
    msg = f"flake.lock updated in {repo.path} (legacy config_repo mode: not committed or pushed)"
    repo.emit(msg)
    return UpdateResult("updated-locally", msg, 0, 1, changes)


def _isolated_update(
    repo: Repo,
    run: RunFn,
    inputs: Sequence[str],
    stop: threading.Event | None,
    attempts: int,
    base: float,
    cap: float,
    rand: Callable[[], float],
    track: Callable[[int | None], None] | None = None,
) -> UpdateResult:
    if repo.pull(run) != 0:
        return UpdateResult("failed", "pull before update failed", 1, 0)
    problem = static_push_problem(repo)
    if problem:
        return _no_access(repo, problem, 0)
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            delay = rand() * min(cap, base * 2 ** (attempt - 2))
            repo.emit(f"retrying update (attempt {attempt}/{attempts}) in {delay:.1f}s")
            if (stop or threading.Event()).wait(delay):
                return _abandon(repo, UpdateResult("failed", "update stopped", 1, attempt))
            if repo.pull(run) != 0:
                return UpdateResult("failed", "fetch/reset after a rejected push failed", 1, attempt)
        old = _read_lock(repo)
        if _nix_update(repo, run, inputs) != 0:
            return _abandon(repo, UpdateResult("failed", "nix flake update failed", 1, attempt))
        if not _lock_dirty(repo):
            why = "another host pushed the same update first" if attempt > 1 else f"at {repo.generation()}"
            msg = f"flake.lock already up to date ({why})"
            repo.emit(msg)
            return UpdateResult("up-to-date", msg, 0, attempt)
        changes = lock_changes(old, _read_lock(repo))
        for change in changes:
            repo.emit(change.line())
        env = repo.git_env(repo.author_env())
        commit = _commit_lock(repo, commit_message(changes, repo.cfg.hostname), env)
        if not commit.ok:
            return _abandon(repo, UpdateResult("failed", f"git commit failed: {commit.error_text()}", 1, attempt, changes))
        sha = repo.head()
        push = repo.git(
            "push", "--porcelain", "--no-verify", "origin", f"HEAD:refs/heads/{repo.branch}",
            timeout=float(repo.cfg.git_timeout), env=env, on_pid=track,
        )
        for line, stream in push.lines():
            repo.emit(line, stream)
        verdict = classify_push(push)
        _log.info("push", attempt=attempt, verdict=verdict, commit=sha[:7], error=None if push.ok else push.error_text())
        if verdict == "ok":
            msg = f"pushed {sha[:7]} to {repo.branch}: " + ", ".join(f"{c.name} {c.old} → {c.new}" for c in changes)
            repo.emit(msg)
            return UpdateResult("pushed", msg, 0, attempt, changes, sha)
        if verdict == "no-access":
            return _no_access(repo, f"the remote refused the push ({push.error_text()})", attempt)
        if verdict == "failed":
            return _abandon(repo, UpdateResult("failed", f"push failed: {push.error_text()}", 1, attempt, changes))
        repo.emit(f"push rejected: {repo.branch} moved on the remote (another host pushed first)", "stderr")
    msg = f"gave up after {attempts} attempts: the remote branch kept moving"
    return _abandon(repo, UpdateResult("failed", msg, 1, attempts))


def _abandon(repo: Repo, result: UpdateResult) -> UpdateResult:
    """Drop any local lock change or commit so the clone matches the remote again."""
    repo.git("reset", "-q", "--hard", f"origin/{repo.branch}")
    repo.emit(f"update failed: {result.message}", "stderr")
    return result


def _no_access(repo: Repo, why: str, attempt: int) -> UpdateResult:
    repo.git("reset", "-q", "--hard", f"origin/{repo.branch}")
    msg = f"no push access: {why}; cannot publish flake.lock, falling back to pull + switch"
    repo.emit(msg, "stderr")
    _log.warn("update_no_push_access", reason=gitenv.redact(why))
    return UpdateResult("no-push-access", gitenv.redact(msg), 0, attempt)

"""Where root gets the commit it builds: its own clone of ``repoUrl``, never the agent's.

The agent's clone is the agent's: anything in it (a commit on no branch, a rewritten ref, a
config that runs a program) may have been put there by a compromised agent. Root therefore keeps
a clone of its own under its state directory (root-owned, ``0700``), fetches the configured branch
from the configured URL with its own credential (the deploy key its unit loads with
``LoadCredential=``, host keys pinned or remembered in root's own ``known_hosts``), and accepts a
commit only when it is reachable from the branch *as just fetched*. A force-push that removed a
commit removes it from what root builds. Git runs with the one hygiene rule of ``gitenv`` (no
hooks, no fsmonitor, no prompt), with nothing inherited from the caller's ``GIT_CONFIG_*``.

The clone is a normal repository that is never checked out (an empty work tree): Nix's git fetcher
reads it like any clone, and nothing in it is ever run. The branch is fetched into
``refs/heads/<branch>`` (HEAD points there), so ``git+file://<clone>?ref=<branch>&rev=<sha>`` names
a commit Nix can find on that ref.

Legacy ``configRepo`` mode has no URL root could fetch: root builds from the checkout and trusts
its owner (see docs/root-boundary.md); only the commit's existence is checked there, and any
signature policy still applies.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..repo import gitenv
from .. import nix
from ..redact import redact



class Stream(Protocol):
    """Runs a child with its output streamed to the request's log; returns its exit code."""

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> int: ...


LOCK_REF = "nixfleet-lock-refresh"  # branch of root's clone holding root's own lock-refresh commits
FETCH_TIMEOUT = 300


class Refusal(Exception):
    """Root will not build this: ``rule`` names the rule, the message says which commit and why."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule


def git_env(base: Mapping[str, str], *, ssh: str | None,
            extra_config: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """Root's git environment: ``gitenv``'s hygiene, no system config, nothing the caller set for git."""
    clean = {k: v for k, v in base.items() if not k.startswith(("GIT_CONFIG_", "GIT_SSH"))}
    env = gitenv.build_env(clean, timeout=FETCH_TIMEOUT, ssh=ssh,
                           extra_config=[("protocol.ext.allow", "never"), *extra_config])
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    return env


def capture(repo: Path, env: Mapping[str, str], *args: str, timeout: float = 60) -> gitenv.GitResult:
    return gitenv.run_captured(["git", "-C", str(repo), *args], env, None, timeout)


@dataclass
class Fetched:
    head: str  # the branch's head as root just fetched it


class RootClone:
    """Root's own clone of ``url``; ``prepare`` fetches and checks one commit against it."""

    def __init__(self, path: Path, url: str, branch: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.url = url
        self.branch = branch
        self.env = dict(env)

    def flake_ref(self, commit: str, attr: str, ref: str = "") -> str:
        return nix.git_flake(self.path, commit, attr, ref or self.branch)

    def ensure(self, stream: Stream) -> None:
        if (self.path / ".git" / "HEAD").is_file() and self.path.stat().st_uid == os.geteuid():
            return
        if self.path.exists() or self.path.is_symlink():
            aside = self.path.with_name(f"{self.path.name}.broken-{time.time_ns()}")
            os.rename(self.path, aside)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.init-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        if stream(["git", "init", "-q", str(tmp)], self.env) != 0:
            raise Refusal("fetch", f"cannot create root's clone at {self.path}")
        os.rename(tmp, self.path)

    def fetch(self, stream: Stream) -> Fetched:
        """Fetch the branch, force-updating root's ref (a force-push is followed, not merged)."""
        self.ensure(stream)
        ref = f"refs/heads/{self.branch}"
        argv = ["git", "-C", str(self.path), "fetch", "--no-tags", "--prune", "--update-head-ok", "--", self.url,
                f"+{ref}:{ref}"]
        if stream(argv, self.env) != 0:
            raise Refusal("fetch", f"cannot fetch {self.branch} from {redact(self.url)}; root builds only what it "
                                   "fetched itself")
        capture(self.path, self.env, "symbolic-ref", "HEAD", ref)
        head = capture(self.path, self.env, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
        if not head.ok:
            raise Refusal("fetch", f"{redact(self.url)} has no branch {self.branch}")
        return Fetched(head.stdout.strip())

    def prepare(self, commit: str, stream: Stream) -> Fetched:
        """Fetch, then refuse ``commit`` unless it is on the branch as just fetched."""
        fetched = self.fetch(stream)
        if commit == fetched.head:
            return fetched
        exists = capture(self.path, self.env, "cat-file", "-e", f"{commit}^{{commit}}")
        on_branch = exists.ok and capture(self.path, self.env, "merge-base", "--is-ancestor", commit, fetched.head).ok
        if not on_branch:
            where = "is not in" if not exists.ok else "is no longer on (force-pushed away from)"
            raise Refusal("published", f"commit {commit} {where} {self.branch} of {redact(self.url)} as root "
                                       f"fetched it (head {fetched.head[:12]}); root builds only published commits")
        return fetched

    def is_ancestor(self, older: str, newer: str) -> bool:
        return capture(self.path, self.env, "merge-base", "--is-ancestor", older, newer).ok


class LegacySource:
    """Deprecated ``configRepo``: the checkout of the user the agent runs as (trusted as that user)."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        # root reading another uid's repository: trust exactly that path, never ``*``
        self.env = git_env(env, ssh=None, extra_config=[("safe.directory", str(path))])
        self.branch = ""

    def flake_ref(self, commit: str, attr: str, ref: str = "") -> str:
        return nix.git_flake(self.path, commit, attr, ref)

    def prepare(self, commit: str, stream: Stream) -> Fetched:
        if not capture(self.path, self.env, "cat-file", "-e", f"{commit}^{{commit}}").ok:
            raise Refusal("commit", f"{commit} is not a commit in {self.path}")
        return Fetched(commit)

    def is_ancestor(self, older: str, newer: str) -> bool:
        return capture(self.path, self.env, "merge-base", "--is-ancestor", older, newer).ok

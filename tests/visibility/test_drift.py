"""Drift from real git histories: a fleet repository, the agent-style clone of it, fetches."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from nixfleet_agent.repo import gitenv
from nixfleet_agent.visibility.drift import Drift, lock_times

T0 = 1_700_000_000


def git(cwd: Path, *args: str, when: int | None = None) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="A", GIT_AUTHOR_EMAIL="a@example.test", GIT_COMMITTER_NAME="A",
               GIT_COMMITTER_EMAIL="a@example.test", GIT_CONFIG_NOSYSTEM="1", HOME=str(cwd))
    if when is not None:
        env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"] = f"{when} +0000"
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def lock(nixpkgs: int, utils: int) -> str:
    return json.dumps({"nodes": {
        "root": {"inputs": {"nixpkgs": "nixpkgs", "flake-utils": "flake-utils", "home": ["nixpkgs"]}},
        "nixpkgs": {"locked": {"lastModified": nixpkgs, "rev": "a" * 40, "type": "github"}},
        "flake-utils": {"locked": {"lastModified": utils, "rev": "b" * 40, "type": "github"}},
        "nested": {"locked": {"lastModified": 5, "type": "github"}},
    }, "root": "root", "version": 7})


def commit(repo: Path, name: str, when: int, lock_text: str | None = None) -> str:
    (repo / name).write_text(name)
    if lock_text is not None:
        (repo / "flake.lock").write_text(lock_text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", name, when=when)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "--initial-branch=main")
    commit(origin, "a", T0, lock(T0 - 86400 * 40, T0 - 86400 * 400))
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--branch", "main", "--single-branch", "--no-tags", str(origin), str(clone))
    return origin, clone


def fetch(clone: Path) -> None:
    git(clone, "fetch", "-q", "--no-tags", "origin", "+refs/heads/main:refs/remotes/origin/main")


def test_behind_and_since_when(repos: tuple[Path, Path]) -> None:
    origin, clone = repos
    deployed = git(clone, "rev-parse", "HEAD")
    drift = Drift(clone, "main")
    first = drift.state(deployed)
    assert first.commits_behind == 0 and first.behind_since is None and first.remote_commit == deployed
    assert first.lock_last_modified == T0 - 86400 * 40  # the newest input of the deployed lock
    assert dict(first.lock_inputs) == {"nixpkgs": T0 - 86400 * 40, "flake-utils": T0 - 86400 * 400}
    commit(origin, "b", T0 + 100)
    tip = commit(origin, "c", T0 + 200, lock(T0 + 150, T0 - 86400 * 400))
    assert drift.state(deployed).commits_behind == 0  # not fetched yet: no network here, ever
    fetch(clone)
    state = drift.state(deployed)
    assert (state.commits_behind, state.behind_since, state.remote_commit) == (2, T0 + 100, tip)
    assert state.lock_last_modified == T0 - 86400 * 40  # still the *deployed* lock, not the tip's
    # the host switches to the tip: nothing behind, and the lock is the new one
    now = drift.state(tip)
    assert (now.commits_behind, now.behind_since, now.lock_last_modified) == (0, None, T0 + 150)


def test_force_push_counts_the_new_line(repos: tuple[Path, Path]) -> None:
    origin, clone = repos
    deployed = commit(origin, "b", T0 + 100)
    fetch(clone)
    git(origin, "reset", "-q", "--hard", "HEAD~1")
    commit(origin, "b2", T0 + 300)
    commit(origin, "c2", T0 + 400)
    fetch(clone)
    state = Drift(clone, "main").state(deployed)
    assert state.commits_behind == 2 and state.behind_since == T0 + 300


def test_no_git_child_while_nothing_changed(repos: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    origin, clone = repos
    deployed = git(clone, "rev-parse", "HEAD")
    calls: list[list[str]] = []
    real = gitenv.run_captured

    def counting(argv, *rest, **kw):  # type: ignore[no-untyped-def]
        calls.append(list(argv))
        return real(argv, *rest, **kw)

    monkeypatch.setattr(gitenv, "run_captured", counting)
    drift = Drift(clone, "main")
    drift.state(deployed)
    assert calls
    calls.clear()
    for _ in range(20):
        drift.state(deployed)
    assert calls == []
    commit(origin, "b", T0 + 100)
    fetch(clone)
    assert drift.state(deployed).commits_behind == 1
    assert calls and not any("show" in argv for argv in calls)  # the deployed lock was cached


def test_unknowns_say_why(repos: tuple[Path, Path], tmp_path: Path) -> None:
    _, clone = repos
    assert "no switch" in Drift(clone, "main").state("").detail
    missing = Drift(clone, "main").state("f" * 40)
    assert missing.commits_behind is None and "not in the clone" in missing.detail
    assert Drift(tmp_path / "nowhere", "main").state("f" * 40).detail == "no clone"


@pytest.mark.parametrize("text", ["", "[]", '{"nodes": 3}', '{"nodes": {"x": {"locked": {"lastModified": "1"}}}}'])
def test_lock_times_tolerates_odd_locks(text: str) -> None:
    assert lock_times(text) == (None, ())

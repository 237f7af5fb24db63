"""``update`` with a real ``nix flake update``: commit, push, rejected-push retry, no push access."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Mapping, Sequence

import pytest
from nixfleet_agent.repo import lockupdate
from nixfleet_agent.repo.lockupdate import UpdateResult
from nixfleet_agent.repo.clone import Repo
from repo_servers import GitDaemon, HttpBackend
from repo_support import Collect, Emitted, FlakeRemote, make_cfg, sh_git

pytestmark = pytest.mark.usefixtures("need_nix")


def locked_rev(lock_text: str) -> str:
    return str(json.loads(lock_text)["nodes"]["dep"]["locked"]["rev"])


def no_sleep() -> float:
    return 0.0


@pytest.fixture
def flake(tmp_path: Path) -> FlakeRemote:
    return FlakeRemote(tmp_path / "remotes")


def test_update_commits_and_pushes_the_new_lock(tmp_path: Path, flake: FlakeRemote, run: Collect, emitted: Emitted) -> None:
    old_rev = locked_rev(flake.show("flake.lock"))
    new_rev = flake.bump_dep("dep v2")
    repo = Repo(make_cfg(tmp_path, repo_url=flake.url), emit=emitted)
    repo.ensure()
    result = lockupdate.update(repo, run)
    assert result.outcome == "pushed" and result.exit_code == 0 and not result.needs_pull_switch
    assert locked_rev(flake.show("flake.lock")) == new_rev
    assert flake.head() == result.commit == repo.head()
    subject, author, body = flake.log("%s%n%ae%n%b")[:3]
    assert subject == "flake.lock: update dep"
    assert author == "nixfleet-agent@testhost"
    assert body == "Updated by nixfleet-agent on testhost:"
    message = sh_git("--git-dir", str(flake.bare), "log", "-1", "--format=%B", "main")
    assert f"• dep: {old_rev[:7]} → {new_rev[:7]}" in message
    changed = sh_git("--git-dir", str(flake.bare), "show", "--name-only", "--format=", "main")
    assert changed == "flake.lock"
    nix_env = next(env for call, env in zip(run.calls, run.envs) if call[-2:] == ["flake", "update"])
    assert nix_env["GIT_TERMINAL_PROMPT"] == "0"  # nix's own git fetches get the same hygiene
    assert ("core.hooksPath", "/dev/null") in [
        (nix_env[f"GIT_CONFIG_KEY_{i}"], nix_env[f"GIT_CONFIG_VALUE_{i}"]) for i in range(int(nix_env["GIT_CONFIG_COUNT"]))
    ]
    assert f"dep {old_rev[:7]} → {new_rev[:7]}" in result.message


def test_bump_moves_only_the_agent_input(tmp_path: Path, run: Collect) -> None:
    """bump-flake: the agent's input (by default `nixfleet-agent`, the README's name for this flake)
    moves, every other input stays where the fleet pinned it."""
    flake = FlakeRemote(tmp_path / "remotes", inputs=("dep", "nixfleet-agent"))
    lock = json.loads(flake.show("flake.lock"))
    dep_before = lock["nodes"]["dep"]["locked"]["rev"]
    flake.bump_dep("dep v2")
    agent_rev = flake.bump_dep("agent v2", "nixfleet-agent")
    repo = Repo(make_cfg(tmp_path, repo_url=flake.url))
    repo.ensure()
    assert repo.cfg.agent_input == "nixfleet-agent"
    result = lockupdate.update(repo, run, inputs=(repo.cfg.agent_input,))
    assert result.outcome == "pushed", result
    after = json.loads(flake.show("flake.lock"))["nodes"]
    assert after["nixfleet-agent"]["locked"]["rev"] == agent_rev
    assert after["dep"]["locked"]["rev"] == dep_before
    assert [c.name for c in result.changes] == ["nixfleet-agent"]


def test_bump_of_an_input_the_flake_lacks_is_an_error_naming_it(tmp_path: Path, flake: FlakeRemote, run: Collect,
                                                                 emitted: Emitted) -> None:
    """A fleet that calls this flake something else (upstream's agent input was `nixfleet`) is told
    which option and TOML key to set, and which inputs its lock does have."""
    before = flake.head()
    repo = Repo(make_cfg(tmp_path, repo_url=flake.url), emit=emitted)
    repo.ensure()
    result = lockupdate.update(repo, run, inputs=(repo.cfg.agent_input,))
    assert result.exit_code != 0 and result.outcome == "failed"
    assert ("error: flake.lock has no input 'nixfleet-agent' (it has: dep): set services.nixfleet-agent.agentInput "
            "(agent_input) to the name your fleet flake gives this flake", "stderr") in emitted.lines, emitted.lines
    assert flake.head() == before


def test_update_with_nothing_new_reports_up_to_date(tmp_path: Path, flake: FlakeRemote, run: Collect) -> None:
    before = flake.head()
    repo = Repo(make_cfg(tmp_path, repo_url=flake.url))
    repo.ensure()
    result = lockupdate.update(repo, run)
    assert result.outcome == "up-to-date" and result.exit_code == 0
    assert "already up to date" in result.message
    assert flake.head() == before


def test_configured_author_identity_is_used(tmp_path: Path, flake: FlakeRemote, run: Collect) -> None:
    flake.bump_dep("v2")
    repo = Repo(make_cfg(tmp_path, repo_url=flake.url, git_author_name="Fleet Bot", git_author_email="bot@example.org"))
    repo.ensure()
    assert lockupdate.update(repo, run).outcome == "pushed"
    assert flake.log("%an <%ae> / %cn <%ce>")[0] == "Fleet Bot <bot@example.org> / Fleet Bot <bot@example.org>"


class RaceRun(Collect):
    """Another host pushes right after our first ``nix flake update`` ran (a real push, real git)."""

    def __init__(self, other: FlakeRemote) -> None:
        super().__init__()
        self.other = other
        self.fired = False
        self.count = 0

    def __call__(self, argv: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None) -> int:
        code = super().__call__(argv, env, cwd)
        if not self.fired and list(argv[-2:]) == ["flake", "update"]:
            self.fired = True
            self.other.sync()
            self.count += 1
            self.other.commit({"hosts/web9.nix": f"{{ n = {self.count}; }}\n"}, "admin adds web9")
        return code


def test_rejected_push_is_redone_on_top_of_the_remote(tmp_path: Path, flake: FlakeRemote, emitted: Emitted) -> None:
    new_rev = flake.bump_dep("v2")
    repo = Repo(make_cfg(tmp_path, repo_url=flake.url))
    repo.ensure()
    race = RaceRun(flake)
    result = lockupdate.update(repo, race, rand=no_sleep, emit=emitted)  # notes go to this command
    assert result.outcome == "pushed" and result.attempts == 2
    assert "push rejected" in emitted.text()
    subjects = flake.log("%s")
    assert subjects[:2] == ["flake.lock: update dep", "admin adds web9"]  # linear, nothing lost
    assert sh_git("--git-dir", str(flake.bare), "rev-list", "--merges", "main") == ""
    assert locked_rev(flake.show("flake.lock")) == new_rev


def test_gives_up_after_bounded_attempts(tmp_path: Path, flake: FlakeRemote, emitted: Emitted) -> None:
    flake.bump_dep("v2")
    repo = Repo(make_cfg(tmp_path, repo_url=flake.url, update_attempts=2), emit=emitted)
    repo.ensure()

    class AlwaysRace(RaceRun):
        def __call__(self, argv: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None) -> int:
            self.fired = False
            return super().__call__(argv, env, cwd)

    result = lockupdate.update(repo, AlwaysRace(flake), rand=no_sleep)
    assert result.outcome == "failed" and result.exit_code != 0 and result.attempts == 2
    assert "gave up after 2 attempts" in result.message
    assert repo.head() == sh_git("rev-parse", "origin/main", cwd=repo.path)  # no stray local commit
    assert flake.log("%s")[0] == "admin adds web9"


def test_two_agents_updating_at_once_both_finish_linearly(tmp_path: Path, flake: FlakeRemote) -> None:
    new_rev = flake.bump_dep("v2")
    repos = [Repo(make_cfg(tmp_path / f"host{i}", repo_url=flake.url, hostname=f"host{i}")) for i in (1, 2)]
    for repo in repos:
        repo.ensure()
    results: list[UpdateResult] = []
    gate = threading.Barrier(2)

    def agent(repo: Repo) -> None:
        gate.wait(10)
        results.append(lockupdate.update(repo, Collect(), backoff_base=0.2))

    threads = [threading.Thread(target=agent, args=(r,)) for r in repos]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    outcomes = sorted(r.outcome for r in results)
    assert outcomes in (["pushed", "pushed"], ["pushed", "up-to-date"]), [r.message for r in results]
    assert sh_git("--git-dir", str(flake.bare), "rev-list", "--merges", "main") == ""
    assert locked_rev(flake.show("flake.lock")) == new_rev
    updates = [s for s in flake.log("%s") if s.startswith("flake.lock")]
    assert len(updates) == outcomes.count("pushed")
    if "up-to-date" in outcomes:
        assert any("already up to date" in r.message for r in results)


def test_a_hung_push_reports_its_pid_and_ends_when_signalled(tmp_path: Path, flake: FlakeRemote,
                                                            run: Collect) -> None:
    """``stop`` during ``update``: the push is PID-tracked like any child, so the dispatcher's SIGTERM
    to its process group ends it (here a remote whose pre-receive hook hangs) instead of waiting
    for git_timeout; the remote is untouched and the clone goes back to the remote's state."""
    hook = flake.bare / "hooks" / "pre-receive"
    reached = tmp_path / "push-reached-the-remote"
    hook.write_text(f"#!/bin/sh\ntouch {reached}\nsleep 120\n")
    hook.chmod(0o755)
    before = flake.head()
    flake.bump_dep("v2")
    repo = Repo(make_cfg(tmp_path, repo_url=flake.url, git_timeout=300))
    repo.ensure()
    tracked: list[int | None] = []
    results: list[UpdateResult] = []

    def track(pid: int | None) -> None:
        tracked.append(pid)
        if pid is not None:  # what Dispatcher.stop does with the tracked PID
            threading.Timer(1.0, os.killpg, (os.getpgid(pid), signal.SIGTERM)).start()

    worker = threading.Thread(target=lambda: results.append(lockupdate.update(repo, run, track=track)))
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the push ignored SIGTERM"
    (result,) = results
    assert result.outcome == "failed" and result.message.startswith("push failed"), result
    assert reached.exists()  # it really hung in the remote, not before
    assert len(tracked) == 2 and tracked[0] and tracked[1] is None  # announced, then cleared
    assert flake.head() == before and repo.head() == before


def test_read_only_git_daemon_remote_falls_back_to_pull_switch(
    tmp_path: Path, git_daemon: GitDaemon, served: Path, emitted: Emitted
) -> None:
    flake = FlakeRemote(served / "ro")
    flake.bump_dep("v2")
    before = flake.head()
    repo = Repo(make_cfg(tmp_path, repo_url=git_daemon.url(flake.bare)), emit=emitted)
    repo.ensure()
    result = lockupdate.update(repo, Collect())
    assert result.outcome == "no-push-access" and result.needs_pull_switch and result.exit_code == 0
    assert "no push access" in result.message and "falling back to pull + switch" in result.message
    assert flake.head() == before
    assert repo.head() == before  # the local attempt was thrown away


def test_http_remote_without_credentials_falls_back_without_trying(
    tmp_path: Path, http_backend: HttpBackend, served: Path, run: Collect
) -> None:
    flake = FlakeRemote(served / "http-anon")
    flake.bump_dep("v2")
    repo = Repo(make_cfg(tmp_path, repo_url=http_backend.url(flake.bare)))
    repo.ensure()
    result = lockupdate.update(repo, run)
    assert result.needs_pull_switch
    assert "is HTTPS without credentials" in result.message
    assert not any(c[-2:] == ["flake", "update"] for c in run.calls)


def test_http_push_refused_by_server_falls_back_and_never_shows_the_password(
    tmp_path: Path, http_backend: HttpBackend, served: Path, emitted: Emitted
) -> None:
    flake = FlakeRemote(served / "http-auth")
    flake.bump_dep("v2")
    before = flake.head()
    repo = Repo(make_cfg(tmp_path, repo_url=http_backend.url(flake.bare, "deploy:s3cretpw")), emit=emitted)
    repo.ensure()
    run = Collect()
    result = lockupdate.update(repo, run)
    assert result.needs_pull_switch, result.message
    assert flake.head() == before
    assert "s3cretpw" not in result.message and "s3cretpw" not in emitted.text()


def test_legacy_update_changes_lock_in_place_without_committing(tmp_path: Path, flake: FlakeRemote, run: Collect) -> None:
    new_rev = flake.bump_dep("v2")
    before = sh_git("rev-parse", "HEAD", cwd=flake.work)
    repo = Repo(make_cfg(tmp_path, repo_dir=flake.work, config_repo=str(flake.work)))
    result = lockupdate.update(repo, run)
    assert result.outcome == "updated-locally"
    assert locked_rev((flake.work / "flake.lock").read_text()) == new_rev
    assert sh_git("rev-parse", "HEAD", cwd=flake.work) == before


def test_lock_changes_lists_each_input() -> None:
    old = {"root": "root", "nodes": {"root": {}, "a": {"locked": {"rev": "1" * 40}},
                                     "gone": {"locked": {"narHash": "sha256-abcdefghijklmnop"}}}}
    new = {"root": "root", "nodes": {"root": {}, "a": {"locked": {"rev": "2" * 40}}, "b": {"locked": {"rev": "3" * 40}}}}
    changes = lockupdate.lock_changes(json.dumps(old), json.dumps(new))
    assert [c.line() for c in changes] == ["• a: 1111111 → 2222222", "• b: (none) → 3333333", "• gone: abcdefghijkl → (removed)"]


@pytest.mark.parametrize(
    ("stdout", "stderr", "verdict"),
    [
        ("To x\n!\tHEAD:refs/heads/main\t[rejected] (fetch first)\nDone\n", "error: failed to push some refs", "rejected"),
        ("!\tHEAD:refs/heads/main\t[remote rejected] (cannot lock ref 'refs/heads/main': is at 1 but expected 2)\n",
         "", "rejected"),
        ("!\tHEAD:refs/heads/main\t[remote rejected] (pre-receive hook declined)\n", "", "no-access"),
        ("!\tHEAD:refs/heads/main\t[remote rejected] (protected branch hook declined)\n", "", "no-access"),
        ("", "fatal: remote error: access denied or repository not exported: /r.git", "no-access"),
        ("", "ERROR: The key you are authenticating with has been marked as read only.", "no-access"),
        ("", "remote: Permission to o/r.git denied to deploy-key.\n"
             "fatal: unable to access '...': The requested URL returned error: 403", "no-access"),
        ("", "ssh: connect to host example port 22: Connection refused\nfatal: Could not read from remote repository.", "failed"),
    ],
)
def test_classify_push(stdout: str, stderr: str, verdict: str) -> None:
    from nixfleet_agent.repo.gitenv import GitResult

    assert lockupdate.classify_push(GitResult(1, stdout, stderr)) == verdict

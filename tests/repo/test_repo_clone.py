"""The isolated clone: first clone, pull as reset, recovery from broken clones, permissions."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from nixfleet_agent.repo.clone import Repo, RepoError
from repo_support import Collect, Emitted, Remote, make_cfg, sh_git


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_clone_is_private_full_history_and_reports_generation(tmp_path: Path, remote: Remote) -> None:
    second = remote.commit({"hosts/web1.nix": "{ }\n"}, "add web1")
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    repo.ensure()
    assert repo.ready()
    assert repo.path == tmp_path / "state" / "repo"
    assert (repo.path / "hosts" / "web1.nix").exists()
    assert repo.head() == second
    assert repo.generation() == second[:7]
    assert mode(tmp_path / "state") == 0o700
    assert mode(repo.path) == 0o700
    assert sh_git("rev-list", "--count", "HEAD", cwd=repo.path) == "2"  # not shallow
    assert sh_git("rev-parse", "--is-shallow-repository", cwd=repo.path) == "false"
    assert not (tmp_path / "state" / "repo.broken").exists()


def test_generation_works_with_packed_refs_and_lock_hash_is_sha256(tmp_path: Path, remote: Remote) -> None:
    remote.commit({"flake.lock": '{"nodes": {}, "root": "root", "version": 7}\n'}, "lock")
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    repo.ensure()
    sh_git("pack-refs", "--all", cwd=repo.path)
    assert not (repo.path / ".git" / "refs" / "heads" / "main").exists()
    assert repo.generation() == remote.head()[:7]
    expected = hashlib.sha256((repo.path / "flake.lock").read_bytes()).hexdigest()
    assert repo.lock_hash() == expected
    (repo.path / "flake.lock").unlink()
    assert repo.lock_hash() == ""


def test_pull_after_force_push_drops_local_commits_and_stray_files(tmp_path: Path, remote: Remote, run: Collect) -> None:
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    repo.ensure()
    (repo.path / "README").write_text("edited locally\n")
    (repo.path / "untracked.txt").write_text("stray\n")
    (repo.path / "newdir").mkdir()
    (repo.path / "newdir" / "f").write_text("x")
    (repo.path / ".gitignore").write_text("result\n")
    (repo.path / "result").write_text("ignored build output\n")
    sh_git("commit", "-q", "-am", "local commit", cwd=repo.path)
    local = sh_git("rev-parse", "HEAD", cwd=repo.path)

    new_head = remote.force_new_history({"flake.nix": "{ outputs = _: { v = 2; }; }\n"})
    assert repo.pull(run) == 0
    assert repo.head() == new_head
    assert sorted(p.name for p in repo.path.iterdir()) == [".git", "flake.nix"]
    assert sh_git("branch", "--contains", local, cwd=repo.path, check=False) == ""
    assert sh_git("status", "--porcelain", "--ignored", cwd=repo.path) == ""
    assert [c[3] for c in run.calls] == ["fetch", "reset", "clean"]
    assert not any("merge" in c or "pull" in c for c in run.calls)


def test_pull_follows_new_commits(tmp_path: Path, remote: Remote, run: Collect) -> None:
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    repo.ensure()
    head = remote.commit({"hosts/db.nix": "{ }\n"}, "db")
    assert repo.pull(run) == 0
    assert repo.generation() == head[:7]


def _clobber_head(repo: Repo) -> None:
    (repo.path / ".git" / "HEAD").write_text("garbage garbage\n")


def _drop_objects(repo: Repo) -> None:
    objects = repo.path / ".git" / "objects"
    for pack in (objects / "pack").glob("*.pack"):
        pack.unlink()
    for loose in objects.glob("[0-9a-f][0-9a-f]/*"):
        loose.unlink()


def _wrong_origin(repo: Repo) -> None:
    sh_git("remote", "set-url", "origin", "file:///elsewhere/other.git", cwd=repo.path)


def _nested_plain_dir(repo: Repo) -> None:
    import shutil

    shutil.rmtree(repo.path / ".git")  # a plain directory inside the agent's state dir


@pytest.mark.parametrize("damage", [_clobber_head, _drop_objects, _wrong_origin, _nested_plain_dir])
def test_broken_clone_is_moved_aside_and_recloned(tmp_path: Path, remote: Remote, damage, emitted: Emitted) -> None:  # type: ignore[no-untyped-def]
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url), emit=emitted)
    repo.ensure()
    (repo.path / "evidence").write_text("kept for inspection\n")
    damage(repo)
    assert repo.problem() is not None
    repo.ensure()
    assert repo.head() == remote.head()
    assert repo.problem() is None
    assert (repo.broken_path / "evidence").read_text() == "kept for inspection\n"
    assert "moving it to" in emitted.text()


def test_missing_objects_found_by_fsck(tmp_path: Path, remote: Remote) -> None:
    """Damage that rev-parse does not notice (a blob gone) is still caught at start."""
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    repo.ensure()
    (repo.path / "big.txt").write_text("local blob\n")
    sh_git("add", "big.txt", cwd=repo.path)
    sh_git("commit", "-q", "-m", "local", cwd=repo.path)
    blob = sh_git("rev-parse", "HEAD:big.txt", cwd=repo.path)
    (repo.path / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    assert repo.problem(thorough=False) is None
    assert "corrupt" in (repo.problem() or "")
    repo.ensure()
    assert repo.head() == remote.head()


def test_only_the_last_broken_clone_is_kept(tmp_path: Path, remote: Remote) -> None:
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    (tmp_path / "state" / ".repo.clone-killed").mkdir(parents=True)  # an interrupted earlier clone
    repo.ensure()
    (repo.path / "first").write_text("1")
    _clobber_head(repo)
    repo.ensure()
    (repo.path / "second").write_text("2")
    _clobber_head(repo)
    repo.ensure()
    assert (repo.broken_path / "second").exists() and not (repo.broken_path / "first").exists()
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["repo", "repo.broken"]


def test_changed_branch_reclones_onto_the_new_branch(tmp_path: Path, remote: Remote) -> None:
    other = remote.commit({"branch.txt": "staging\n"}, "staging only", branch="staging")
    Repo(make_cfg(tmp_path, repo_url=remote.url)).ensure()
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url, branch="staging"))
    repo.ensure()
    assert repo.head() == other
    assert (repo.path / "branch.txt").exists()


def test_failed_clone_raises_clear_redacted_error_then_pull_retries(tmp_path: Path, run: Collect, emitted: Emitted) -> None:
    missing = tmp_path / "later.git"
    repo = Repo(make_cfg(tmp_path, repo_url=f"file://{missing}"), emit=emitted)
    with pytest.raises(RepoError, match="cannot clone repo_url") as info:
        repo.ensure()
    assert str(missing) in str(info.value)
    assert not repo.ready() and repo.last_error
    assert [p.name for p in (tmp_path / "state").iterdir()] == []  # no half clone left behind
    assert repo.pull(run) != 0

    remote = Remote(tmp_path / "r")
    missing.symlink_to(remote.bare)
    assert repo.pull(run) == 0  # a later pull retries the clone at once
    assert repo.ready() and repo.generation() == remote.head()[:7]


def test_credentials_in_repo_url_never_appear_in_errors_or_output(tmp_path: Path, emitted: Emitted) -> None:
    url = "https://deploy:hunter2secret@127.0.0.1:9/fleet.git"
    repo = Repo(make_cfg(tmp_path, repo_url=url, git_timeout=5), emit=emitted)
    with pytest.raises(RepoError) as info:
        repo.ensure()
    assert "hunter2secret" not in str(info.value) and "127.0.0.1:9/fleet.git" in str(info.value)
    assert "hunter2secret" not in emitted.text()
    assert "hunter2secret" not in repo.last_error


def test_state_dir_with_loose_permissions_is_fixed(tmp_path: Path, remote: Remote) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    repo.ensure()
    repo.path.chmod(0o777)
    repo.ensure()
    assert mode(state) == 0o700 and mode(repo.path) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory owned by another user")
def test_state_dir_owned_by_someone_else_is_refused(tmp_path: Path, remote: Remote) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    with pytest.raises(RepoError, match=r"state_dir: .* owned by uid 65534"):
        repo.ensure()
    assert not repo.path.exists()


def test_both_repo_url_and_config_repo_is_refused(tmp_path: Path, remote: Remote) -> None:
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url, config_repo=str(remote.work)))
    with pytest.raises(RepoError, match="both set"):
        repo.ensure()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the clone to another user")
def test_clone_owned_by_someone_else_is_refused_not_moved(tmp_path: Path, remote: Remote) -> None:
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    repo.ensure()
    os.chown(repo.path, 65534, 65534)
    with pytest.raises(RepoError, match=r"repo_dir: .* owned by uid 65534.*chown 0"):
        repo.ensure()
    assert not repo.broken_path.exists()


def test_stale_lock_files_from_a_killed_git_do_not_block_pulls(tmp_path: Path, remote: Remote, run: Collect) -> None:
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    repo.ensure()
    locks = [repo.path / ".git" / "index.lock", repo.path / ".git" / "refs" / "remotes" / "origin" / "main.lock"]
    for lock in locks:
        lock.write_text("")
        os.utime(lock, (1, 1))  # left behind long ago
    head = remote.commit({"new": "x"}, "new")
    assert repo.pull(run) == 0
    assert repo.head() == head
    assert not any(lock.exists() for lock in locks)

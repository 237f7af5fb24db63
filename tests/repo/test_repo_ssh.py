"""Clone and pull over a real sshd on loopback with a deploy key; host key pinning."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from nixfleet_agent.repo import lockupdate
from nixfleet_agent.repo.clone import Repo, RepoError
from repo_servers import Sshd, keygen
from repo_support import Collect, Emitted, FlakeRemote, Remote, make_cfg


def test_clone_and_pull_with_deploy_key_accept_new(tmp_path: Path, sshd: Sshd, run: Collect) -> None:
    remote = Remote(tmp_path / "remotes")
    key = tmp_path / "keys dir" / "deploy key"  # a path with spaces must survive GIT_SSH_COMMAND
    key.parent.mkdir()
    key.write_bytes(sshd.deploy_key.read_bytes())
    key.chmod(0o600)
    repo = Repo(make_cfg(tmp_path, repo_url=sshd.url(remote.bare), ssh_key_file=str(key)))
    repo.ensure()
    assert repo.head() == remote.head()
    known = tmp_path / "state" / "known_hosts"
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(known)], capture_output=True)
    assert found.returncode == 0  # remembered on first contact (possibly hashed)
    assert stat.S_IMODE(known.stat().st_mode) & 0o077 == 0

    head = remote.commit({"hosts/x.nix": "{ }\n"}, "x")
    assert repo.pull(run) == 0
    assert repo.head() == head
    assert "IdentitiesOnly=yes" in run.envs[0]["GIT_SSH_COMMAND"]


def test_unknown_key_is_rejected_with_a_clear_message(tmp_path: Path, sshd: Sshd) -> None:
    remote = Remote(tmp_path / "remotes")
    stranger = keygen(tmp_path / "stranger")
    repo = Repo(make_cfg(tmp_path, repo_url=sshd.url(remote.bare), ssh_key_file=str(stranger), git_timeout=10))
    with pytest.raises(RepoError, match="Permission denied.*deploy key"):
        repo.ensure()


def test_pinned_known_host_mismatch_is_refused(tmp_path: Path, sshd: Sshd) -> None:
    remote = Remote(tmp_path / "remotes")
    impostor = keygen(tmp_path / "impostor_host")
    pinned = tmp_path / "pinned_known_hosts"
    pub = (tmp_path / "impostor_host.pub").read_text().split()
    pinned.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    assert impostor.exists()
    repo = Repo(make_cfg(tmp_path, repo_url=sshd.url(remote.bare), ssh_key_file=str(sshd.deploy_key),
                         known_hosts_file=str(pinned), git_timeout=10))
    with pytest.raises(RepoError, match=f"host key does not match {pinned}"):
        repo.ensure()
    assert not repo.path.exists()
    assert not (tmp_path / "state" / "known_hosts").exists()  # strict mode learns nothing


def test_pinned_known_host_that_matches_works(tmp_path: Path, sshd: Sshd) -> None:
    remote = Remote(tmp_path / "remotes")
    pinned = tmp_path / "pinned_known_hosts"
    pinned.write_text(sshd.host_line())
    repo = Repo(make_cfg(tmp_path, repo_url=sshd.url(remote.bare), ssh_key_file=str(sshd.deploy_key),
                         known_hosts_file=str(pinned)))
    repo.ensure()
    assert repo.head() == remote.head()


def test_loose_key_refused_before_any_connection(tmp_path: Path, sshd: Sshd) -> None:
    remote = Remote(tmp_path / "remotes")
    key = tmp_path / "loose"
    key.write_bytes(sshd.deploy_key.read_bytes())
    key.chmod(0o640)
    repo = Repo(make_cfg(tmp_path, repo_url=sshd.url(remote.bare), ssh_key_file=str(key)))
    with pytest.raises(RepoError, match=f"chmod 600 {key}"):
        repo.ensure()
    assert not (tmp_path / "state" / "known_hosts").exists()


@pytest.mark.usefixtures("need_nix")
def test_update_pushes_over_ssh_with_a_read_write_deploy_key(tmp_path: Path, sshd: Sshd, emitted: Emitted) -> None:
    flake = FlakeRemote(tmp_path / "remotes")
    new_rev = flake.bump_dep("v2")
    repo = Repo(make_cfg(tmp_path, repo_url=sshd.url(flake.bare), ssh_key_file=str(sshd.deploy_key)))
    repo.ensure()
    result = lockupdate.update(repo, Collect(), emit=emitted)
    assert result.outcome == "pushed", emitted.text()
    assert flake.head() == result.commit
    assert new_rev in flake.show("flake.lock")


@pytest.mark.usefixtures("need_nix")
def test_read_only_deploy_key_falls_back_to_pull_switch(tmp_path: Path, sshd: Sshd, emitted: Emitted) -> None:
    flake = FlakeRemote(tmp_path / "remotes")
    flake.bump_dep("v2")
    before = flake.head()
    repo = Repo(make_cfg(tmp_path, repo_url=sshd.url(flake.bare), ssh_key_file=str(sshd.read_only_key)))
    repo.ensure()  # fetching is allowed
    result = lockupdate.update(repo, Collect(), emit=emitted)
    assert result.needs_pull_switch, result.message
    assert "read only" in result.message and "falling back to pull + switch" in result.message
    assert flake.head() == before and repo.head() == before

"""Git hygiene (hooks never run, no prompts, redaction) and the deprecated legacy checkout mode."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from nixfleet_agent.repo import gitenv
from nixfleet_agent.repo.clone import DEPRECATION, Repo, RepoError
from repo_servers import HttpBackend
from repo_support import Collect, Emitted, Remote, make_cfg, sh_git

HOOK_NAMES = ["post-checkout", "post-merge", "reference-transaction", "pre-commit", "post-commit", "post-rewrite", "pre-auto-gc"]


def hook_script(marker: Path) -> str:
    return f"#!/bin/sh\necho \"$0\" >> {marker}\n"


def test_hooks_installed_or_committed_never_run(tmp_path: Path, remote: Remote, run: Collect) -> None:
    marker = tmp_path / "hook-ran"
    committed = {f".githooks/{name}": hook_script(marker) for name in HOOK_NAMES}
    remote.commit(committed, "hooks in the repo")
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    repo.ensure()
    for name in HOOK_NAMES:  # installed locally, and the repo config pointed at the committed ones
        path = repo.path / ".git" / "hooks" / name
        path.write_text(hook_script(marker))
        path.chmod(0o755)
    sh_git("config", "core.hooksPath", ".githooks", cwd=repo.path)

    # The hooks are live for plain git: the test would notice if the agent's git ran them.
    sh_git("commit", "-q", "--allow-empty", "-m", "probe", cwd=repo.path)
    assert marker.exists()
    marker.unlink()

    remote.commit({"more": "x"}, "more")
    assert repo.pull(run) == 0
    repo.ensure()
    env = repo.git_env(repo.author_env())
    assert repo.git("commit", "-q", "--allow-empty", "-m", "agent commit", env=env).ok
    assert not marker.exists()


def test_env_forces_hygiene_through_git_config_env() -> None:
    env = gitenv.build_env(
        {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "user.name", "GIT_CONFIG_VALUE_0": "x", "GIT_DIR": "/x", "PATH": "/bin"},
        timeout=42,
        ssh="ssh -o BatchMode=yes",
    )
    pairs = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))}
    assert pairs["user.name"] == "x"  # the caller's own entries are kept
    assert pairs["core.hooksPath"] == "/dev/null"
    assert pairs["http.lowSpeedTime"] == "42"
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert "GIT_DIR" not in env
    assert env["GIT_SSH_COMMAND"] == "ssh -o BatchMode=yes"


def test_https_without_credentials_fails_fast_instead_of_prompting(
    tmp_path: Path, http_backend: HttpBackend, served: Path
) -> None:
    """A URL the server does not know answers 404; with a prompt git would hang on stdin."""
    repo = Repo(make_cfg(tmp_path, repo_url=http_backend.url(served / "nope.git"), git_timeout=10))
    with pytest.raises(RepoError, match="cannot clone"):
        repo.ensure()


def test_ssh_command_quotes_key_and_sets_safety_options(tmp_path: Path) -> None:
    key = tmp_path / "dir with space" / "key"
    cmd = gitenv.ssh_command(key, tmp_path / "known_hosts", strict=False, connect_timeout=20)
    argv = shlex.split(cmd)
    assert argv[argv.index("-i") + 1] == str(key)
    for option in ("IdentitiesOnly=yes", "BatchMode=yes", "StrictHostKeyChecking=accept-new", "ConnectTimeout=20",
                   f"UserKnownHostsFile={tmp_path / 'known_hosts'}"):
        assert option in argv
    strict = shlex.split(gitenv.ssh_command(key, tmp_path / "pinned", strict=True, connect_timeout=20))
    assert "StrictHostKeyChecking=yes" in strict and "GlobalKnownHostsFile=/dev/null" in strict


def test_key_with_loose_permissions_is_refused_with_fix(tmp_path: Path, remote: Remote) -> None:
    key = tmp_path / "deploy key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o644)
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url, ssh_key_file=str(key)))
    with pytest.raises(RepoError, match=r"ssh_key_file: .* mode 0644.*chmod 600 'deploy key'|chmod 600") as info:
        repo.ensure()
    assert f"chmod 600 {shlex.quote(str(key))}" in str(info.value)
    assert not repo.path.exists()


def test_systemd_credential_key_is_used_when_no_key_is_configured(tmp_path: Path, remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ssh-key").write_text("key")
    (creds / "ssh-key").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    repo = Repo(make_cfg(tmp_path, repo_url=remote.url))
    assert repo.ssh_key() == creds / "ssh-key"
    assert f"-i {creds / 'ssh-key'}" in repo.git_env()["GIT_SSH_COMMAND"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fatal: unable to access 'https://user:pa55@host/x.git/'", "fatal: unable to access 'https://***@host/x.git/'"),
        ("https://ghp_TOKEN123@github.com/o/r", "https://***@github.com/o/r"),
        ("http://u:p@ss@h:80/r", "http://***@h:80/r"),
        ("ssh://git@host:22/r.git", "ssh://git@host:22/r.git"),
        ("ssh://git:pw@host/r.git", "ssh://git:***@host/r.git"),
        ("git@github.com:o/r.git and https://host/path", "git@github.com:o/r.git and https://host/path"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert gitenv.redact(text) == expected


def test_legacy_checkout_pulls_ff_only_and_warns(tmp_path: Path, remote: Remote, run: Collect, emitted: Emitted) -> None:
    user = tmp_path / "user-checkout"
    sh_git("clone", "-q", str(remote.bare), str(user))
    (user / "notes.txt").write_text("user's untracked work\n")
    head = remote.commit({"hosts/new.nix": "{ }\n"}, "new host")
    repo = Repo(make_cfg(tmp_path, repo_dir=user, config_repo=str(user)), emit=emitted)
    assert repo.deprecation_notice() == DEPRECATION and "deprecated" in DEPRECATION
    repo.ensure()
    assert repo.pull(run) == 0
    assert run.calls[-1][-2:] == ["pull", "--ff-only"]
    assert repo.head() == head
    assert (user / "notes.txt").exists()  # the user's checkout is never reset or cleaned
    assert "deprecated" in emitted.text()

    sh_git("commit", "-q", "--allow-empty", "-m", "user's local commit", cwd=user)
    remote.commit({"other": "x"}, "diverge")
    local = sh_git("rev-parse", "HEAD", cwd=user)
    assert repo.pull(run) != 0  # diverged: refuse rather than merge
    assert sh_git("rev-parse", "HEAD", cwd=user) == local


def test_isolated_mode_has_no_deprecation_notice(tmp_path: Path, remote: Remote) -> None:
    assert Repo(make_cfg(tmp_path, repo_url=remote.url)).deprecation_notice() is None


def test_legacy_checkout_missing_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    repo = Repo(make_cfg(tmp_path, repo_dir=missing, config_repo=str(missing)))
    with pytest.raises(RepoError, match="config_repo: .*nowhere does not exist"):
        repo.ensure()


def test_credentials_never_reach_logs_or_command_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = tmp_path / "served"
    remote = Remote(served / "cred")
    server = HttpBackend(served)  # its own server: the test stops it half-way
    try:
        url = server.url(remote.bare, "deploy:pw-9f8e7d")
        repo = Repo(make_cfg(tmp_path, repo_url=url))
        repo.ensure()
        sh_git("remote", "set-url", "origin", url.replace("cred/", "cred/../cred/"), cwd=repo.path)  # tampered
        run, notes = Collect(), Emitted()
        assert repo.pull(run, emit=notes) == 0  # moved aside and re-cloned; the note goes to this command
        assert "moving it to" in notes.text()
    finally:
        server.close()
    assert repo.pull(run, emit=notes) != 0  # the remote is gone: git prints the URL it failed on
    logged = capsys.readouterr().err
    assert "repo_invalid" in logged and "unable to access" in run.text()
    for text in (logged, run.text(), notes.text(), repo.last_error):
        assert "pw-9f8e7d" not in text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the key to another owner")
def test_key_rules_follow_ssh(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k")
    key.chmod(0o440)
    with pytest.raises(gitenv.KeyFileError, match="chmod 600"):
        gitenv.check_key_file(key)  # ours and group-readable: ssh would refuse it
    os.chown(key, 65534, os.getegid())
    gitenv.check_key_file(key)  # a secret shared through a group by its owner: ssh accepts it
    key.chmod(0o444)
    with pytest.raises(gitenv.KeyFileError, match="readable by other users"):
        gitenv.check_key_file(key)  # world-readable is never private
    key.chmod(0o400)
    gitenv.check_key_file(key)

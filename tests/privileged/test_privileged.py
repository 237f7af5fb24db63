"""The root side of the privileged switch channel (`nixfleet-agent-privileged`): the request file.

Root must not trust the unprivileged agent: only allowlisted actions, only a well-formed commit,
this host's attribute, never a symlink or an oversized or special file, never a replayed id; what
is not a request leaves the watched path. Accepted requests build exactly
`git+file://<root's clone>?ref=<branch>&rev=<sha>#<attr>`, stream all output to output.log and end
with result.json, both for the requesting uid only. `nixos-rebuild` and `systemctl` are shims that
record how they were called. Which commits root accepts: test_trust.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from root_support import ID, Host, git

from nixfleet_agent.root import main as root_main
from nixfleet_agent.root import request as privileged
from nixfleet_agent.root import source

@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("SHIM_CALLS", "")
    monkeypatch.setenv("SHIM_EXIT", "0")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # an inherited git config must not leak through
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "safe.directory")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "*")
    return Host(tmp_path)


def test_switch_builds_exactly_the_requested_commit_from_roots_clone(host: Host) -> None:
    host.write(host.good())
    assert host.run() == 0
    flake = host.flake(host.commit)
    assert host.builds() == [f"switch --flake {flake}"]
    assert not host.request.exists()
    result = host.result()
    assert result["id"] == ID and result["action"] == "switch" and result["exit_code"] == 0
    assert "error" not in result and str(result["finished_at"]).endswith("Z")
    log = host.log()
    assert f"building: switch --flake {flake}" in log
    # the one hygiene rule of gitenv reaches Nix's git fetcher; nothing inherited (safe.directory=*)
    assert "git config: core.hooksPath=/dev/null" in log and "git config: core.fsmonitor=false" in log
    assert "safe.directory" not in log and "cwd=/ " in log
    assert "to stderr" in log  # stderr is captured in the same log
    # root's clone is its own: root-owned, private, and not the agent's
    assert host.clone.stat().st_uid == os.geteuid() and stat.S_IMODE(host.root_dir.stat().st_mode) == 0o700


def test_results_are_for_the_requesting_uid_only(host: Host) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to write the request as another uid")
    host.write(host.good(), owner=65534)
    assert host.run() == 0
    op_dir = host.out / ID
    for directory in (host.out, op_dir):
        info = directory.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o711, 0)  # passable, not listable
    for name in ("output.log", "result.json"):
        info = (op_dir / name).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, 65534), name
    assert not [p for p in op_dir.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_request_directories_are_pruned_to_a_bounded_number(host: Host) -> None:
    host.extra = ["--keep", "3"]
    for n in range(5):
        host.write(host.good(id=f"req-{n}"))
        assert host.run() == 0
        os.utime(host.out / f"req-{n}", (1_000_000 + n, 1_000_000 + n))
    assert sorted(p.name for p in host.out.iterdir() if p.is_dir()) == ["req-2", "req-3", "req-4"]


@pytest.mark.parametrize("action", ["boot", "test"])
def test_only_actions_the_agent_sends_are_accepted(host: Host, action: str) -> None:
    """nixos-rebuild boot/test: valid for nixos-rebuild, never sent by the agent, so refused."""
    host.write(host.good(action=action))
    assert host.run() == 2
    assert str(host.result()["error"]).startswith(f'action: not allowed (got "{action}"; allowed: switch, '
                                                  'rollback, reboot)')
    assert host.shim_calls() == []


def test_rollback_and_reboot_need_no_commit(host: Host) -> None:
    host.write({"id": "r1", "action": "rollback", "commit": "", "flake_attr": ""})
    assert host.run() == 0
    host.write({"id": "r2", "action": "reboot"})
    assert host.run() == 0
    assert host.shim_calls() == ["switch --rollback", "reboot"]
    assert host.result("r1")["exit_code"] == 0 and host.result("r2")["action"] == "reboot"


def test_failed_switch_reports_its_exit_code_and_keeps_output(host: Host) -> None:
    host.write(host.good())
    assert host.run(exit_code=3) == 1
    assert host.result()["exit_code"] == 3
    assert "building: switch" in (host.out / "20261121T235959Z-1a2b" / "output.log").read_text()


def test_missing_nixos_rebuild_is_a_start_error(host: Host) -> None:
    (host.bin / "nixos-rebuild").unlink()
    host.write(host.good())
    assert host.run() == 1
    result = host.result()
    assert result["exit_code"] == 127 and "cannot start" in str(result["error"])


@pytest.mark.parametrize("action", ["shell", "SWITCH", "switch; reboot", "", 1, None])
def test_disallowed_action_is_rejected(host: Host, action: object) -> None:
    host.write(host.good(action=action))
    assert host.run() == privileged.REJECTED_EXIT
    result = host.result()
    assert result["exit_code"] == 2 and str(result["error"]).startswith("action: not allowed")
    assert host.shim_calls() == []
    assert "request rejected: action" in (host.out / "20261121T235959Z-1a2b" / "output.log").read_text()


@pytest.mark.parametrize("commit", ["HEAD", "main", "abc123", "A" * 40, "a" * 41, "--upload-pack=x", 42])
def test_malformed_commit_is_rejected(host: Host, commit: object) -> None:
    host.write(host.good(commit=commit))
    assert host.run() == 2
    assert str(host.result()["error"]).startswith("commit: must be a full 40-hex")
    assert host.shim_calls() == []


def test_roots_git_runs_no_program_from_repository_config(host: Host) -> None:
    """Root's clone is root's, but the rule holds for any repository root's git touches (the legacy
    checkout is another user's): configuration cannot make root run a program."""
    git(host.agent_clone, "config", "core.fsmonitor", "touch /tmp/pwned")
    git(host.agent_clone, "config", "core.hooksPath", str(host.agent_clone / "evil-hooks"))
    env = source.LegacySource(host.agent_clone, os.environ).env
    effective = {key: subprocess.run(["git", "-C", str(host.agent_clone), "config", "--get", key], env=env,
                                     capture_output=True, text=True).stdout.strip()
                 for key in ("core.fsmonitor", "core.hooksPath")}
    assert effective == {"core.fsmonitor": "false", "core.hooksPath": "/dev/null"}


def test_legacy_checkout_is_trusted_as_exactly_that_path(host: Host, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the checkout to another uid")
    clones = []
    for name in ("other-clone", "second-clone"):
        clone = tmp_path / name
        subprocess.run(["cp", "-a", str(host.origin), str(clone)], check=True)
        for root, dirs, files in os.walk(clone):
            for path in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(path, 65534, 65534)
        clones.append(clone)
    other, second = clones
    plain = {k: v for k, v in os.environ.items() if not k.startswith("GIT_CONFIG")}

    def head(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], env=env, capture_output=True, text=True)

    refused = head(other, plain)
    assert refused.returncode != 0 and "dubious ownership" in refused.stderr
    assert head(other, source.LegacySource(other, plain).env).stdout.strip() == host.commit
    assert head(second, source.LegacySource(other, plain).env).returncode != 0  # only that one path


def test_legacy_mode_builds_the_checkouts_commit(host: Host) -> None:
    argv = host.argv()
    at = argv.index("--repo-url")
    argv[at:at + 2] = ["--legacy-repo", str(host.agent_clone)]
    host.write(host.good())
    os.environ.update(SHIM_CALLS=str(host.calls), SHIM_EXIT="0")
    assert root_main.main(argv) == 0
    assert host.builds() == [f"switch --flake git+file://{host.agent_clone}?rev={host.commit}#web1"]


@pytest.mark.parametrize("attr", ["", "web1#other", "a b", "web1?rev=x", "x" * 64, None])
def test_bad_flake_attr_is_rejected(host: Host, attr: object) -> None:
    host.write(host.good(flake_attr=attr))
    assert host.run() == 2
    assert str(host.result()["error"]).startswith("flake_attr:")
    assert host.shim_calls() == []


def test_another_hosts_configuration_is_refused(host: Host) -> None:
    """Published does not mean meant for this machine: root builds only its own attribute."""
    host.write(host.good(flake_attr="db1"))
    assert host.run() == 2
    assert host.result()["error"] == "flake_attr: db1 is not this host's configuration (web1)"
    assert host.shim_calls() == []


def test_without_its_own_host_name_root_builds_nothing(host: Host) -> None:
    """Fail closed: root started without --flake-attr (and no hostname in --config) used to build
    whatever attribute the agent's request named."""
    argv = host.argv()
    i = argv.index("--flake-attr")
    del argv[i:i + 2]
    host.write(host.good(flake_attr="db1"))
    assert root_main.main(argv) == 2
    assert str(host.result()["error"]).startswith("flake_attr: this host's name is not configured")
    assert host.shim_calls() == []


def test_refresh_turns_off_the_negative_cache_for_builds_only(host: Host) -> None:
    host.write(host.good(refresh=True))
    assert host.run() == 0
    assert host.builds() == [f"switch --flake {host.flake(host.commit)} --option narinfo-cache-negative-ttl 0"]
    host.write({"id": "r2", "action": "rollback", "commit": "", "flake_attr": "", "refresh": True})
    assert host.run() == 0
    assert host.builds()[-1] == "switch --rollback"


@pytest.mark.parametrize("refresh", ["true", 1, None, "--option sandbox false"])
def test_non_boolean_refresh_is_rejected(host: Host, refresh: object) -> None:
    host.write(host.good(refresh=refresh))
    assert host.run() == 2
    assert str(host.result()["error"]).startswith("refresh: must be true or false")
    assert host.shim_calls() == []


def test_unknown_field_is_rejected(host: Host) -> None:
    host.write(host.good(extra_args="--option sandbox false"))
    assert host.run() == 2
    assert str(host.result()["error"]) == "extra_args: unknown field"


@pytest.mark.parametrize("request_id", ["..", ".", "../etc", "a/b", "", "x" * 65, ".hidden", 7])
def test_unusable_id_is_rejected_without_a_directory(host: Host, request_id: object) -> None:
    host.write(host.good(id=request_id))
    assert host.run() == 2
    rejected = host.rejected()
    assert rejected["exit_code"] == 2 and str(rejected["error"]).startswith("id: ")
    assert sorted(p.name for p in host.out.iterdir()) == ["rejected.json"]
    assert host.shim_calls() == []


def test_replayed_id_does_not_overwrite_the_first_result(host: Host) -> None:
    host.write(host.good())
    host.run()
    first = host.result()
    host.write(host.good(action="reboot"))
    assert host.run() == 2
    assert host.result() == first
    assert host.rejected()["error"] == "id: 20261121T235959Z-1a2b was already used"
    assert host.builds() == [f"switch --flake {host.flake(host.commit)}"]


def test_symlinked_request_is_neither_followed_nor_its_target_removed(host: Host, tmp_path: Path) -> None:
    target = tmp_path / "root-only-file"
    target.write_text(json.dumps(host.good()))
    host.request.symlink_to(target)
    assert host.run() == 2
    assert "is a symlink" in str(host.rejected()["error"])
    assert target.read_text() == json.dumps(host.good())  # untouched
    assert not host.request.is_symlink() and not host.request.exists()  # the link itself is gone
    assert host.shim_calls() == []


def test_symlinked_request_directory_is_refused(host: Host, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "request.json").write_text(json.dumps(host.good()))
    host.request_dir.rmdir()
    host.request_dir.symlink_to(elsewhere)
    assert host.run() == 2
    assert "is not a plain directory" in str(host.rejected()["error"])
    assert (elsewhere / "request.json").exists()  # root removed nothing through the link
    assert not host.request_dir.is_symlink() and not host.request_dir.exists()  # the link is gone: no re-trigger
    assert host.shim_calls() == []


def test_directory_request_is_moved_out_of_the_watched_path(host: Host) -> None:
    host.request.mkdir()
    (host.request / "inner").write_text("x")
    assert host.run() == 2
    error = str(host.rejected()["error"])
    assert "is a directory, not a file; moved it aside to .request.json.refused-" in error, error
    assert not host.request.exists()  # PathExists= no longer holds: the path unit does not fire again
    (aside,) = [p for p in host.request_dir.iterdir() if p.name.startswith(".request.json.refused-")]
    assert (aside / "inner").read_text() == "x"  # renamed, never walked
    assert host.shim_calls() == []


def test_hard_linked_request_is_rejected(host: Host, tmp_path: Path) -> None:
    original = tmp_path / "some-file"
    original.write_text(json.dumps(host.good()))
    os.link(original, host.request)
    assert host.run() == 2
    assert "single link" in str(host.rejected()["error"])
    assert original.exists() and not host.request.exists()
    assert host.shim_calls() == []


def test_unwritable_output_directory_is_reported_without_traceback(host: Host,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    host.out.write_text("not a directory")
    host.write(host.good())
    assert host.run() == 1
    err = capsys.readouterr().err
    assert "component=privileged event=failed" in err and "Traceback" not in err


def test_oversized_request_is_rejected(host: Host) -> None:
    doc = host.good()
    doc["padding"] = "x" * privileged.MAX_REQUEST_BYTES
    host.write(doc)
    assert host.run() == 2
    assert "larger than 4096 bytes" in str(host.rejected()["error"])
    assert not host.request.exists()
    assert host.shim_calls() == []


def test_fifo_request_is_rejected_without_blocking(host: Host) -> None:
    os.mkfifo(host.request)
    assert host.run() == 2
    assert "not a regular file" in str(host.rejected()["error"])
    assert not host.request.exists()


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe", b"[]", b'"switch"'])
def test_malformed_request_is_rejected(host: Host, data: bytes) -> None:
    host.request.write_bytes(data)
    assert host.run() == 2
    assert str(host.rejected()["error"]).startswith("request: ")


def test_no_request_is_nothing_to_do(host: Host) -> None:
    assert host.run() == 0
    assert not host.out.exists() or not list(host.out.iterdir())


def test_console_entry_point_runs_as_a_program(host: Host) -> None:
    host.write(host.good())
    env = dict(os.environ, SHIM_CALLS=str(host.calls), SHIM_EXIT="0")
    proc = subprocess.run([sys.executable, "-m", "nixfleet_agent.root", *host.argv()],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "component=privileged event=finished" in proc.stderr and "exit_code=0" in proc.stderr
    assert host.result()["exit_code"] == 0


def test_relative_paths_are_refused(host: Host) -> None:
    assert root_main.main(["--request", "request.json", "--repo-url", str(host.origin),
                           "--out-dir", str(host.out)]) == 2


def test_what_to_fetch_and_build_comes_from_the_modules_config_file(host: Host, tmp_path: Path) -> None:
    """On NixOS root reads repo_url, branch and hostname from the agent's TOML as the module
    rendered it (the store), so root and agent cannot disagree; the file must be root's alone."""
    config = tmp_path / "nixfleet-agent.toml"
    config.write_text(f'repo_url = "{host.origin}"\nbranch = "main"\nhostname = "web1"\nagent_input = "nixfleet"\n')
    config.chmod(0o644)
    argv = ["--config", str(config), "--request", str(host.request), "--out-dir", str(host.out),
            "--state-dir", str(host.root_dir), "--nixos-rebuild", str(host.bin / "nixos-rebuild")]
    os.environ.update(SHIM_CALLS=str(host.calls), SHIM_EXIT="0")
    host.write(host.good(id="a"))
    assert root_main.main(argv) == 0
    assert host.builds() == [f"switch --flake {host.flake(host.commit)}"]
    host.write(host.good(id="b", flake_attr="db1"))
    assert root_main.main(argv) == 2  # hostname from the file pins the attribute
    config.chmod(0o664)
    host.write(host.good(id="c"))
    assert root_main.main(argv) == 2
    assert not host.request.exists()  # consumed all the same: no re-trigger loop on a bad config
    assert host.rejected() == {"id": "c", "exit_code": 2, "finished_at": host.rejected()["finished_at"],
                               "error": f"config: cannot read '{config}': must be owned by root and writable by nobody else"}
    assert host.builds() == [f"switch --flake {host.flake(host.commit)}"]  # still only the first
    config.chmod(0o644)
    config.write_bytes(b'hostname = "web1\xff"\n')  # not UTF-8: one line, not a traceback
    host.write(host.good(id="d"))
    assert root_main.main(argv) == 2
    assert host.rejected()["error"] == f"config: cannot read '{config}': not UTF-8 text (byte 16)"


def test_an_unusable_deploy_key_is_reported_and_the_request_consumed(host: Host, tmp_path: Path) -> None:
    key = tmp_path / "deploy-key"
    key.write_text("not really a key\n")
    key.chmod(0o644)
    host.extra = ["--ssh-key", str(key)]
    host.write(host.good())
    assert host.run() == 2
    assert not host.request.exists()
    assert str(host.rejected()["error"]).startswith(f"config: ssh_key_file: {key} has mode 0644")
    assert host.shim_calls() == []

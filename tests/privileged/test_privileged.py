"""The root side of the privileged switch channel (`nixfleet-agent-privileged`).

Root must not trust the unprivileged agent: only allowlisted actions, only a well-formed commit
that exists in the clone, never a symlink or an oversized or special file, never a replayed id.
Accepted requests build exactly `git+file://<repo>?rev=<sha>#<attr>` with git trusting that one
repository, stream all output to output.log and end with result.json. `nixos-rebuild` and
`systemctl` are shims that record how they were called.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from nixfleet_agent.root import request as privileged

SHIM = """#!/bin/sh
# records argv, cwd and git's safe.directory setting, prints some output, exits $SHIM_EXIT
printf '%s\\n' "$*" >> "$SHIM_CALLS"
echo "building: $*"
echo "git config: $GIT_CONFIG_KEY_0=$GIT_CONFIG_VALUE_0 $GIT_CONFIG_KEY_1=$GIT_CONFIG_VALUE_1 \\
$GIT_CONFIG_KEY_2=$GIT_CONFIG_VALUE_2 count=$GIT_CONFIG_COUNT cwd=$(pwd)"
echo "to stderr" >&2
exit "${SHIM_EXIT:-0}"
"""


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="a", GIT_AUTHOR_EMAIL="a@example.test",
               GIT_COMMITTER_NAME="a", GIT_COMMITTER_EMAIL="a@example.test")
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


class Host:
    """The agent's state dir (request side), its clone, the root-owned output dir and shims."""

    def __init__(self, tmp: Path) -> None:
        tmp = tmp.resolve()
        self.state = tmp / "state"
        self.request_dir = self.state / "privileged"
        self.request_dir.mkdir(parents=True, mode=0o700)
        self.request = self.request_dir / "request.json"
        self.repo = self.state / "repo"
        self.repo.mkdir()
        git(self.repo, "init", "-q", "-b", "main")
        (self.repo / "flake.nix").write_text("{ outputs = _: { }; }\n")
        git(self.repo, "add", "flake.nix")
        git(self.repo, "commit", "-q", "-m", "fleet")
        self.commit = git(self.repo, "rev-parse", "HEAD")
        self.out = tmp / "privileged-out"
        self.calls = tmp / "calls"
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for name in ("nixos-rebuild", "systemctl"):
            shim = bin_dir / name
            shim.write_text(SHIM)
            shim.chmod(0o755)
        self.bin = bin_dir

    def write(self, doc: object) -> None:
        self.request.write_text(json.dumps(doc))

    def good(self, **overrides: object) -> dict[str, object]:
        return {"id": "20261121T235959Z-1a2b", "action": "switch", "commit": self.commit, "flake_attr": "web1",
                **overrides}

    def run(self, exit_code: int = 0) -> int:
        os.environ["SHIM_CALLS"] = str(self.calls)
        os.environ["SHIM_EXIT"] = str(exit_code)
        return privileged.main(["--request", str(self.request), "--repo", str(self.repo), "--out-dir", str(self.out),
                                "--nixos-rebuild", str(self.bin / "nixos-rebuild"),
                                "--systemctl", str(self.bin / "systemctl")])

    def shim_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def result(self, request_id: str = "20261121T235959Z-1a2b") -> dict[str, object]:
        return json.loads((self.out / request_id / "result.json").read_text())

    def rejected(self) -> dict[str, object]:
        return json.loads((self.out / "rejected.json").read_text())


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("SHIM_CALLS", "")
    monkeypatch.setenv("SHIM_EXIT", "0")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # an inherited git config must not leak through
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "safe.directory")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "*")
    return Host(tmp_path)


def test_switch_builds_exactly_the_requested_commit(host: Host) -> None:
    host.write(host.good())
    assert host.run() == 0
    flake = f"git+file://{host.repo}?rev={host.commit}#web1"
    assert host.shim_calls() == [f"switch --flake {flake}"]
    assert not host.request.exists()
    result = host.result()
    assert result["id"] == "20261121T235959Z-1a2b" and result["action"] == "switch" and result["exit_code"] == 0
    assert "error" not in result and str(result["finished_at"]).endswith("Z")
    log = (host.out / "20261121T235959Z-1a2b" / "output.log").read_text()
    assert f"building: switch --flake {flake}" in log
    assert (f"git config: safe.directory={host.repo} core.hooksPath=/dev/null core.fsmonitor=false count=3 cwd=/"
            in log)
    assert "to stderr" in log  # stderr is captured in the same log


def test_output_files_are_readable_by_the_agent(host: Host) -> None:
    host.write(host.good())
    host.run()
    op_dir = host.out / "20261121T235959Z-1a2b"
    assert stat.S_IMODE(op_dir.stat().st_mode) == 0o755
    for name in ("output.log", "result.json"):
        assert stat.S_IMODE((op_dir / name).stat().st_mode) == 0o644


@pytest.mark.parametrize("action", ["boot", "test"])
def test_other_build_actions(host: Host, action: str) -> None:
    host.write(host.good(action=action))
    assert host.run() == 0
    assert host.shim_calls() == [f"{action} --flake git+file://{host.repo}?rev={host.commit}#web1"]


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


def test_clone_config_cannot_make_root_run_programs(host: Host) -> None:
    git(host.repo, "config", "core.fsmonitor", "touch /tmp/pwned")
    git(host.repo, "config", "core.hooksPath", str(host.repo / "evil-hooks"))
    env = privileged.git_env(host.repo, os.environ)
    effective = {key: subprocess.run(["git", "-C", str(host.repo), "config", "--get", key], env=env,
                                     capture_output=True, text=True).stdout.strip()
                 for key in ("core.fsmonitor", "core.hooksPath")}
    assert effective == {"core.fsmonitor": "false", "core.hooksPath": "/dev/null"}


def test_git_trusts_exactly_the_clone_owned_by_another_user(host: Host, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the clone to another uid")
    clones = []
    for name in ("other-clone", "second-clone"):
        clone = tmp_path / name
        subprocess.run(["cp", "-a", str(host.repo), str(clone)], check=True)
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
    assert head(other, privileged.git_env(other, plain)).stdout.strip() == host.commit
    assert head(second, privileged.git_env(other, plain)).returncode != 0  # only that one path


def test_commit_not_in_the_clone_is_rejected(host: Host) -> None:
    host.write(host.good(commit="0" * 40))
    assert host.run() == 1
    result = host.result()
    assert result["exit_code"] == 2 and str(result["error"]).startswith(f"commit: {'0' * 40} is not a commit")
    assert host.shim_calls() == []


@pytest.mark.parametrize("attr", ["", "web1#other", "a b", "web1?rev=x", "x" * 64, None])
def test_bad_flake_attr_is_rejected(host: Host, attr: object) -> None:
    host.write(host.good(flake_attr=attr))
    assert host.run() == 2
    assert str(host.result()["error"]).startswith("flake_attr:")
    assert host.shim_calls() == []


def test_refresh_turns_off_the_negative_cache_for_builds_only(host: Host) -> None:
    host.write(host.good(refresh=True))
    assert host.run() == 0
    flake = f"git+file://{host.repo}?rev={host.commit}#web1"
    assert host.shim_calls() == [f"switch --flake {flake} --option narinfo-cache-negative-ttl 0"]
    host.write({"id": "r2", "action": "rollback", "commit": "", "flake_attr": "", "refresh": True})
    assert host.run() == 0
    assert host.shim_calls()[-1] == "switch --rollback"


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
    assert host.shim_calls() == [f"switch --flake git+file://{host.repo}?rev={host.commit}#web1"]


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
    proc = subprocess.run([sys.executable, "-m", "nixfleet_agent.root", "--request", str(host.request),
                           "--repo", str(host.repo), "--out-dir", str(host.out),
                           "--nixos-rebuild", str(host.bin / "nixos-rebuild")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "component=privileged event=finished" in proc.stderr and "exit_code=0" in proc.stderr
    assert host.result()["exit_code"] == 0


def test_relative_paths_are_refused(host: Host) -> None:
    assert privileged.main(["--request", "request.json", "--repo", str(host.repo), "--out-dir", str(host.out)]) == 2

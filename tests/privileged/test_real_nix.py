"""The root side's flake references and lock refresh against real Nix (Debian's nix-bin evaluates
offline): what root hands nixos-rebuild must name a commit Nix finds in root's never-checked-out
clone, and the lock refresh must produce a commit whose flake evaluates to the refreshed input.
nixos-rebuild stays a shim (nothing can be built here); ``nix`` is the real one."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from root_support import ID, Host, commit, git

NIX_FLAGS = ["--extra-experimental-features", "nix-command flakes"]


def nix(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nix", *NIX_FLAGS, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    if shutil.which("nix") is None:
        pytest.skip("nix is not installed (apt install nix-bin)")
    monkeypatch.setenv("SHIM_CALLS", "")
    host = Host(tmp_path)
    agent_input = tmp_path / "agent-input"
    agent_input.mkdir()
    git(agent_input, "init", "-q", "-b", "main")
    commit(agent_input, {"flake.nix": "{ outputs = _: { version = 1; }; }\n"}, "agent 1")
    (host.origin / "flake.nix").write_text(
        f'{{ inputs.nixfleet-agent.url = "git+file://{agent_input}"; '
        "outputs = { self, nixfleet-agent }: { web1 = nixfleet-agent.version; }; }\n")
    (host.origin / "flake.lock").unlink()
    locked = nix("flake", "lock", cwd=host.origin)
    if locked.returncode != 0:
        pytest.skip(f"nix cannot lock a local flake here: {locked.stderr.strip()[-300:]}")
    host.commit = _commit_all(host.origin, "use the agent input")
    commit(agent_input, {"flake.nix": "{ outputs = _: { version = 2; }; }\n"}, "agent 2")
    host.bin.joinpath("nix").unlink()  # the real nix from PATH
    return host


def _commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def evaluate(flake: str) -> str:
    done = nix("eval", flake)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_flake_root_builds_names_a_commit_nix_finds(host: Host) -> None:
    host.write(host.good())
    host.extra = ["--nix", "nix"]
    assert host.run() == 0, host.log()
    (build,) = host.builds()
    assert evaluate(build.split(" ")[2]) == "1"


def test_roots_lock_refresh_evaluates_to_the_new_input(host: Host) -> None:
    host.write(host.good(update_lock=True, refresh=True))
    host.extra = ["--nix", "nix"]
    assert host.run() == 0, host.log()
    assert host.result(ID)["exit_code"] == 0
    (build,) = host.builds()
    flake = build.split(" ")[2]
    assert "ref=nixfleet-lock-refresh&rev=" in flake, flake
    assert evaluate(flake) == "2"  # root's commit: the refreshed lock
    assert evaluate(host.flake(host.commit)) == "1"  # the published commit is unchanged
    lock = json.loads(git(host.origin, "show", "HEAD:flake.lock"))
    assert lock["nodes"]["nixfleet-agent"]["locked"]["rev"] != json.loads(
        git(host.clone, "show", "nixfleet-lock-refresh:flake.lock"))["nodes"]["nixfleet-agent"]["locked"]["rev"]

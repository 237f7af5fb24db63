"""The root side on nix-darwin: `nixfleet-agent-privileged --darwin-rebuild ...`, as the root launchd
daemon of modules/darwin.nix runs it (tests/nix/test_darwin_module.py checks that command line).

The same request rules and the same trust as on NixOS (test_privileged.py, test_trust.py); what
differs is the program and the reboot. `darwin-rebuild` and `shutdown` are stand-ins that record
their argv and environment: no macOS machine is here, so a real `darwin-rebuild switch` is not run.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from root_support import ID, Host

from nixfleet_agent.root import main as root_main

STAND_IN = """#!/bin/sh
printf '%s %s\\n' "${0##*/}" "$*" >> "$SHIM_CALLS"
echo "darwin stand-in: $*"
echo "HOME=$HOME"
i=0
while [ "$i" -lt "${GIT_CONFIG_COUNT:-0}" ]; do
  eval "echo \\"git config: \\$GIT_CONFIG_KEY_$i=\\$GIT_CONFIG_VALUE_$i\\""
  i=$((i + 1))
done
if [ -n "${SHIM_TAIL:-}" ]; then printf '%s\\n' "$SHIM_TAIL"; fi
exit "${SHIM_EXIT:-0}"
"""


class Mac(Host):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        for name in ("darwin-rebuild", "shutdown"):
            (self.bin / name).write_text(STAND_IN)
            (self.bin / name).chmod(0o755)

    def argv(self) -> list[str]:
        nixos = super().argv()
        at = nixos.index("--nixos-rebuild")
        del nixos[at:at + 2]
        return [*nixos, "--darwin-rebuild", str(self.bin / "darwin-rebuild"), "--shutdown", str(self.bin / "shutdown")]


@pytest.fixture
def mac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mac:
    monkeypatch.setenv("SHIM_CALLS", "")
    monkeypatch.setenv("SHIM_EXIT", "0")
    monkeypatch.setenv("HOME", "/var/lib/nixfleet-agent-privileged/root")  # what the start script exports
    return Mac(tmp_path)


def test_switch_runs_darwin_rebuild_on_roots_clone(mac: Mac) -> None:
    mac.write(mac.good())
    assert mac.run() == 0
    assert mac.shim_calls() == [f"darwin-rebuild switch --flake {mac.flake(mac.commit)}"]
    result = mac.result()
    assert result["id"] == ID and result["action"] == "switch" and result["exit_code"] == 0
    log = mac.log()
    assert "HOME=/var/lib/nixfleet-agent-privileged/root" in log
    assert "git config: core.hooksPath=/dev/null" in log
    # results: root-owned 0711 directories, 0600 files for the requesting uid
    for name in ("output.log", "result.json"):
        info = (mac.out / ID / name).stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert stat.S_IMODE((mac.out / ID).stat().st_mode) == 0o711


def test_failed_darwin_rebuild_is_reported(mac: Mac) -> None:
    mac.write(mac.good())
    assert mac.run(exit_code=134) == 1  # e.g. an activation aborted (nix-darwin#1758)
    assert mac.result()["exit_code"] == 134


def test_activation_aborted_on_a_user_agent_names_nix_darwin_1758(mac: Mac, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIM_TAIL", "setting up user launchd services...\nreloading user service org.nixos.skhd")
    mac.write(mac.good())
    assert mac.run(exit_code=134) == 1
    result = mac.result()
    assert result["exit_code"] == 134
    assert "user LaunchAgent org.nixos.skhd (nix-darwin#1758" in result["error"]
    # another failure keeps the bare exit code
    monkeypatch.setenv("SHIM_TAIL", "error: builder for '/nix/store/x.drv' failed")
    mac.write(mac.good(id="second"))
    assert mac.run(exit_code=1) == 1
    assert "error" not in mac.result("second")


def test_rollback_and_reboot_on_darwin(mac: Mac) -> None:
    mac.write({"id": "r1", "action": "rollback", "commit": "", "flake_attr": ""})
    assert mac.run() == 0
    mac.write({"id": "r2", "action": "reboot"})
    assert mac.run() == 0
    assert mac.shim_calls() == ["darwin-rebuild switch --rollback", "shutdown -r now"]


def test_another_hosts_configuration_is_refused_on_darwin(mac: Mac) -> None:
    mac.write(mac.good(flake_attr="other-mac"))
    assert mac.run() == 2
    assert mac.shim_calls() == [] and "not this host's configuration" in mac.result()["error"]


def test_nixos_and_darwin_rebuild_exclude_each_other(mac: Mac, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        root_main.main([*mac.argv(), "--nixos-rebuild", "/bin/false"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(("golden", "through_root"), [("darwin", True), ("hm-darwin", False), ("nixos", True)])
def test_agent_sends_switches_to_root_under_the_darwin_module(golden: str, through_root: bool) -> None:
    """The nix-darwin module's rendered config makes the agent use the root daemon; the Home Manager
    one (no root side) keeps the agent's own launcher."""
    from nixfleet_agent import config
    from nixfleet_agent.commands import privileged_switch

    path = Path(__file__).resolve().parents[1] / "golden" / golden / "nixfleet-agent.toml"
    env = {"NIXFLEET_TOKEN": "test-token", "NIXFLEET_STATE_DIR": str(path.parent), "NIXFLEET_PLATFORM": "darwin"}
    if golden == "nixos":
        env["NIXFLEET_PLATFORM"] = "nixos"
    cfg = config.load({"config": str(path)}, env)
    assert privileged_switch(cfg) is through_root

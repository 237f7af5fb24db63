"""The agent's side of the guard-rails (guard/agentside.py), with a real agent and dashboard.

Home Manager has no root side: the agent itself refuses a switch when the store's filesystem (here
a small tmpfs in a private mount namespace, reached through ``/proc/<holder>/root``) is too full,
with the numbers as the command's error, and switches once there is room. On NixOS root decides;
the agent shows root's note (``boot`` instead of ``switch``) in the final status.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cmd_support import kinds
from mountns import MountNamespace, namespace
from test_privileged_channel import RootUnit

MIB = 1 << 20
HOST = "test-host"


ns = pytest.fixture(name="ns")(namespace)


def config(tmp_path: Path, **preflight: object) -> str:
    path = tmp_path / "agent.toml"
    path.write_text("[preflight]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in preflight.items()))
    return str(path)


def test_home_manager_switch_refused_on_a_full_store_then_allowed(session, tmp_path: Path, ns: MountNamespace) -> None:
    store = ns.tmpfs(tmp_path / "nix" / "store", 8 * MIB)
    seen = ns.outside(store)  # the agent runs outside the namespace
    ns.fill(store / "closure", 5 * MIB)
    session.start(NIXFLEET_PLATFORM="home-manager", NIXFLEET_RESTART_EXIT_CODE="0",
                  NIXFLEET_CONFIG=config(tmp_path, store_path=str(seen), store_min_free=4 * MIB, boot_paths=[]))
    status, records = session.run("switch")
    assert status["status"] == "error" and status["exit_code"] == 2, status
    assert status["message"].startswith(f"preflight: not enough free space for a switch: {seen} has 3145728 bytes "
                                        "free (3.0 MiB), 4194304 bytes (4.0 MiB) required"), status
    assert "progress:system:error" in kinds(records)
    assert session.shims.calls("home-manager") == []  # nothing started
    assert session.agent.running()
    os.unlink(ns.outside(store / "closure"))
    status, _ = session.run("switch")
    assert status["status"] == "ok", status
    assert session.shims.calls("home-manager")[-1]["argv"][:2] == ["switch", "--flake"]


def test_a_boot_instead_of_switch_from_root_is_the_final_status(session, fleet_repo: Path, tmp_path: Path) -> None:
    current, new = tmp_path / "current-system", tmp_path / "new-system"
    for system, value in ((current, "dbus"), (new, "broker")):
        system.mkdir()
        (system / "switch-inhibitors").write_text(json.dumps({"dbus-implementation": value}))
    root_config = tmp_path / "root.toml"
    root_config.write_text(f'[preflight]\nboot_paths = []\nstore_path = "{tmp_path}"\nstore_min_free = 0\n')
    session.shims.set("nix_build_out", str(new))
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(tmp_path / "privileged-root"))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    root = RootUnit(state, tmp_path, fleet_repo, session.agent.env)
    root.argv += ["--config", str(root_config), "--current-system", str(current)]
    try:
        status, records = session.run("switch", timeout=30)
    finally:
        root.close()
    assert status["status"] == "ok" and status["exit_code"] == 0, status
    assert status["message"].startswith("switch inhibited (dbus-implementation: dbus -> broker): ran nixos-rebuild "
                                        "boot instead"), status
    assert session.shims.calls("nixos-rebuild")[-1]["argv"][0] == "boot"
    assert any("takes effect at the next reboot" in line for line in session.lines(records))

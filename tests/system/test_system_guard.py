"""The guard-rails through the real root unit under a real systemd (the golden units, adapted):
a tmpfs /boot too full for a switch refuses it with the numbers on the dashboard and allows it once
freed; changed switch inhibitors make root run ``nixos-rebuild boot`` and the final status say so;
retention deletes old generations, rewrites the boot entries and collects garbage after a success.

Stand-ins: tests/system/files/nixos-rebuild and files/nix-tools (nix, nix-env, nix-store), a
symlink tree for /run/current-system, the new system and the system profile.
"""

from __future__ import annotations

import json

from dashboard import Dashboard
from systier import gitserver, units
from systier.agenthost import AgentHost
import test_system_agent as base
from test_system_agent import HOST, TOKEN, shim_lines  # noqa: F401 - TOKEN: the conftest's dash

# the same module-scoped fixtures: the fleet repository, the agent host in the container
fleet, host = base.fleet, base.host

MIB = 1 << 20
CALLS = "/etc/nixfleet-test/nix-calls"


def switch(host: AgentHost, dash: Dashboard, repo: gitserver.FleetRepo, what: str) -> tuple[dict[str, object], int]:
    repo.commit({"hosts/systier.nix": f"{{ guard = \"{what}\"; }}\n"}, what)
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    status = dash.wait_message("status", HOST, since=since, timeout=90,
                               where=lambda r: r.payload.get("command") == "pull-switch").payload
    return status, since


def test_a_full_boot_refuses_the_switch_on_the_dashboard_then_a_freed_one_switches(
        host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]) -> None:
    box = host.box
    box.sh("mkdir -p /boot && mount -t tmpfs -o size=80m nixfleet-boot /boot && head -c 20m /dev/zero > /boot/fill")
    try:
        status, since = switch(host, dash, fleet[0], "full boot")
        assert status["exit_code"] == 2, status
        # no kernel under /run/current-system here: the floor, 64 MiB, against 80 - 20 MiB free
        assert str(status["message"]).startswith(
            "preflight: not enough free space for a switch: /boot has 62914560 bytes free (60.0 MiB), "
            "67108864 bytes (64.0 MiB) required"), status
        assert not [line for line in shim_lines(dash, since) if line.startswith("nixos-rebuild-shim")]
        box.sh("rm /boot/fill")
        status, since = switch(host, dash, fleet[0], "freed boot")
        assert status["exit_code"] == 0, status
        assert any(line.startswith("nixos-rebuild-shim uid=0 args=switch ") for line in shim_lines(dash, since))
        assert any("pre-flight: /boot 80.0 MiB free (64.0 MiB required)" in line for line in shim_lines(dash, since))
    finally:
        box.run("umount", "/boot", check=False)


def system_tree(host: AgentHost, path: str, inhibitors: dict[str, str]) -> None:
    host.box.write_file(f"{path}/switch-inhibitors", json.dumps(inhibitors))


def test_changed_inhibitors_boot_instead_of_switch_through_the_root_unit(
        host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]) -> None:
    box = host.box
    system_tree(host, "/etc/nixfleet-test/current-system", {"dbus-implementation": "dbus"})
    system_tree(host, "/etc/nixfleet-test/new-system", {"dbus-implementation": "broker"})
    box.run("ln", "-sfn", "/etc/nixfleet-test/current-system", "/run/current-system")
    try:
        status, since = switch(host, dash, fleet[0], "new dbus")
    finally:
        box.run("rm", "-f", "/run/current-system", "/etc/nixfleet-test/new-system/switch-inhibitors")
    assert status["exit_code"] == 0, status
    assert str(status["message"]).startswith("switch inhibited (dbus-implementation: dbus -> broker): ran "
                                             "nixos-rebuild boot instead"), status
    shim = [line for line in shim_lines(dash, since) if line.startswith("nixos-rebuild-shim uid=")]
    assert shim and shim[0].startswith("nixos-rebuild-shim uid=0 args=boot --flake git+file://"), shim


def test_retention_runs_through_the_root_unit_after_a_successful_switch(
        host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]) -> None:
    box = host.box
    original = box.read_file(units.CONFIG_PATH)
    box.write_file(units.CONFIG_PATH, original + "\n[retention]\nkeep_generations = 2\ngc = true\n")
    box.write_file("/etc/nixfleet-test/profile-7/bin/switch-to-configuration",
                   f"#!/bin/sh\necho \"switch-to-configuration $*\" >> {CALLS}\necho 'updating boot entries'\n",
                   mode=0o755)
    box.sh("mkdir -p /nix/var/nix/profiles && ln -sfn /etc/nixfleet-test/profile-7 /nix/var/nix/profiles/system")
    box.run("rm", "-f", CALLS)
    try:
        status, since = switch(host, dash, fleet[0], "retained")
    finally:
        box.write_file(units.CONFIG_PATH, original)
    assert status["exit_code"] == 0, status
    calls = box.read_file(CALLS).splitlines()
    assert calls[0].startswith("nix --extra-experimental-features nix-command flakes build --no-link --json ")
    assert calls[1:] == ["nix-env --profile /nix/var/nix/profiles/system --delete-generations +2",
                         "switch-to-configuration boot", "nix-store --gc"]
    lines = shim_lines(dash, since)
    assert "updating boot entries" in lines and "nix-tools-shim: nix-store --gc" in lines

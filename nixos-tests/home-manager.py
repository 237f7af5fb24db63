# ruff: noqa: F821 - the NixOS test driver provides start_all, subtest, the machines and the helpers
# (5) The Home Manager module on a Linux node: alice's user unit (lingering, so it runs without a
# login) starts with her token and registers; it runs with a PATH of its own under which `nix`
# and `home-manager` resolve (a user manager's default PATH has neither: off NixOS never, and
# on NixOS not alice's profile, where home-manager is here), and it does not order itself after
# network-online.target, which does not exist in a user manager.
TOKEN = "vm-home-manager-token"
USER_TOKEN = "/home/alice/.config/nixfleet/token"

start_all()
server.wait_for_unit("fleet-git.service")
fleet_commit({"flake.nix": "{ outputs = { self }: { }; }\n"}, "initial")
start_dashboard(TOKEN)
workstation.wait_for_unit("user@1000.service")
write_secret(workstation, USER_TOKEN, TOKEN, owner="alice")
workstation.succeed("systemctl --user -M alice@ restart nixfleet-agent.service")
workstation.wait_for_unit("nixfleet-agent.service", "alice")

with subtest("the user unit registers and sends heartbeats"):
    register = wait_registered("workstation")["register"]
    assert register["hostname"] == "workstation", register
    wait_heartbeats("workstation", 2)

with subtest("it runs as alice"):
    pid = agent_pid(workstation, user="alice")
    workstation.succeed(f"test \"$(stat -c %U /proc/{pid})\" = alice")

with subtest("its PATH finds nix and home-manager"):
    pid = agent_pid(workstation, user="alice")
    environ = workstation.succeed(f"tr '\\0' '\\n' < /proc/{pid}/environ").splitlines()
    paths = [line.removeprefix("PATH=") for line in environ if line.startswith("PATH=")]
    assert paths, "the agent runs without PATH"
    entries = paths[0].split(":")
    assert "/run/current-system/sw/bin" in entries, entries
    assert {"/etc/profiles/per-user/alice/bin", "/home/alice/.nix-profile/bin"} & set(entries), entries
    for tool in ("nix", "home-manager"):
        workstation.succeed(
            f"runuser -u alice -- env -i PATH={shlex.quote(paths[0])} /bin/sh -c 'command -v {tool}'"
        )

with subtest("it is not ordered after network-online.target"):
    after = workstation.succeed("systemctl --machine=alice@ --user show --value -p After nixfleet-agent.service")
    assert "network-online.target" not in after.split(), after

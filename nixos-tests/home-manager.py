# ruff: noqa: F821 - the NixOS test driver provides start_all, subtest, the machines and the helpers
# (5) The Home Manager module on a Linux node: alice's user unit (lingering, so it runs without a
# login) starts with her token and registers.
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

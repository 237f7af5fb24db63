# ruff: noqa: F821 - the NixOS test driver provides start_all, subtest, the machines and the helpers
# (1) The agent node registers with the dashboard node and keeps sending heartbeats; it runs as a
# dynamic user with a private state directory, and systemd brings it back after a crash.
TOKEN = "vm-registration-token"

start_all()
server.wait_for_unit("fleet-git.service")
fleet_commit({"flake.nix": "{ outputs = { self }: { }; }\n"}, "initial fleet configuration")
start_dashboard(TOKEN)
write_secret(agent, TOKEN_FILE, TOKEN)
agent.succeed("systemctl restart nixfleet-agent.service")
agent.wait_for_unit("nixfleet-agent.service")

with subtest("the agent registers with this host's facts"):
    register = wait_registered("agent")["register"]
    assert register["hostname"] == "agent", register
    assert register["host_type"] == "nixos", register
    assert register["repo_url"] == "git://server/fleet.git", register

with subtest("heartbeats keep coming"):
    wait_heartbeats("agent", 3)

with subtest("it runs unprivileged with a private state directory"):
    pid = agent_pid(agent)
    uid = int(agent.succeed(f"stat -c %u /proc/{pid}").strip())
    assert uid != 0, "the agent runs as root"
    agent.succeed(f"test \"$(stat -c '%a %u' /var/lib/private/nixfleet-agent)\" = '700 {uid}'")

with subtest("systemd restarts a killed agent and it registers again"):
    pid = agent_pid(agent)
    agent.succeed(f"kill -9 {pid}")
    wait_registered("agent", registrations=2)
    assert agent_pid(agent) not in (0, pid)

# ruff: noqa: F821 - the NixOS test driver provides start_all, subtest, the machines and the helpers
# (4) The token reaches the agent only at run time: a poison token string is in no store path of
# the agent node's system closure, not in its units, its process environment or command line,
# nor in the journal.
POISON = "poison-7c1e2f9d-token-must-never-be-in-the-store"

start_all()
server.wait_for_unit("fleet-git.service")
fleet_commit({"flake.nix": "{ outputs = { self }: { }; }\n"}, "initial")
start_dashboard(POISON)
write_secret(agent, TOKEN_FILE, POISON)
agent.succeed("systemctl restart nixfleet-agent.service")

with subtest("the agent authenticates with the token"):
    wait_registered("agent")
    wait_heartbeats("agent", 2)

with subtest("no store path of the system closure holds the token"):
    found = agent.succeed(f"nix-store -qR /run/current-system | xargs grep -rlsF -- {POISON} || true")
    assert found.strip() == "", f"token found in the store: {found}"

with subtest("nor the units, the process or the journal"):
    units = "nixfleet-agent.service nixfleet-agent-privileged.service nixfleet-agent-privileged.path"
    agent.fail(f"systemctl cat {units} | grep -F -- {POISON}")
    agent.fail(f"systemctl show {units} | grep -F -- {POISON}")
    pid = agent_pid(agent)
    agent.fail(f"grep -aF -- {POISON} /proc/{pid}/environ /proc/{pid}/cmdline")
    agent.fail(f"journalctl -b --no-pager | grep -F -- {POISON}")

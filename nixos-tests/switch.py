# ruff: noqa: F821 - the NixOS test driver provides start_all, subtest, the machines and the helpers
# (3) A switch from the dashboard goes through the privileged unit: root runs nixos-rebuild (a
# shim switching to a specialisation pre-built in the VM's store, named by the commit), output
# streams to the dashboard, the result arrives, and the agent restarts only when the switch
# changed its package.
import re

TOKEN = "vm-switch-token"


def switch_to(target):
    commit = fleet_commit({"flake.nix": "{ outputs = { self }: { }; }\n", "target": target}, f"switch to {target}")
    before = wait_registered("agent")["registrations"]
    since = send_command("agent", "pull-switch")
    status = wait_status("agent", "pull-switch", since, timeout=300)
    assert status["exit_code"] == 0, status
    lines = output_lines("agent", since)
    assert any(line.startswith("nixos-rebuild-shim uid=0 ") and commit in line for line in lines), lines
    assert any(f"switching to specialisation {target}" in line for line in lines), lines
    agent.succeed(f"test \"$(cat /etc/fleet-target)\" = {target}")
    # the dashboard completes a switch when the agent registers again
    wait_registered("agent", registrations=before + 1)


start_all()
server.wait_for_unit("fleet-git.service")
fleet_commit({"flake.nix": "{ outputs = { self }: { }; }\n", "target": "none"}, "initial")
start_dashboard(TOKEN)
write_secret(agent, TOKEN_FILE, TOKEN)
agent.succeed("systemctl restart nixfleet-agent.service")
wait_registered("agent")
agent.wait_for_unit("nixfleet-agent-privileged.path")

with subtest("the agent cannot become root itself"):
    pid = agent_pid(agent)
    agent.succeed(f"grep -q '^NoNewPrivs:[[:space:]]*1' /proc/{pid}/status")
    agent.succeed(f"grep -q '^CapEff:[[:space:]]*0000000000000000' /proc/{pid}/status")

with subtest("a switch that leaves the agent's package alone does not restart it"):
    pid = agent_pid(agent)
    switch_to("same")
    assert agent_pid(agent) == pid, "the agent restarted although its package did not change"

with subtest("a switch that changes the agent's package restarts it with the new one"):
    pid = agent_pid(agent)
    switch_to("newagent")
    agent.wait_until_succeeds(f"test \"$(systemctl show --value -p MainPID nixfleet-agent.service)\" != {pid}")
    new_pid = agent_pid(agent)
    exec_start = agent.succeed("systemctl show --value -p ExecStart nixfleet-agent.service")
    found = re.search(r"/nix/store/[^/ ]+-nixfleet-agent-[^/ ]+", exec_start)
    assert found is not None, f"no agent package in the unit's ExecStart: {exec_start}"
    package = found.group(0)
    agent.succeed(f"test -e {package}/changed-marker")
    cmdline = agent.succeed(f"tr '\\0' ' ' < /proc/{new_pid}/cmdline")
    assert package in cmdline, f"the restarted agent does not run {package}: {cmdline}"

with subtest("the privileged unit refuses a malformed request"):
    agent.succeed(
        "install -d -m 0700 /var/lib/private/nixfleet-agent/privileged"
        " && echo '{\"id\": \"bad-1\", \"action\": \"rm-rf\", \"commit\": \"x\", \"flake_attr\": \"agent\"}'"
        " > /var/lib/private/nixfleet-agent/privileged/request.json"
    )
    agent.wait_until_succeeds("test -e /var/lib/nixfleet-agent-privileged/bad-1/result.json", timeout=60)
    result = json.loads(agent.succeed("cat /var/lib/nixfleet-agent-privileged/bad-1/result.json"))
    assert result["exit_code"] == 2 and "action" in result["error"], result

with subtest("a full /boot refuses the switch with the numbers, a freed one switches"):
    # a small tmpfs over /boot, 150 of its 200 MiB taken: below the 64 MiB floor
    agent.succeed("mkdir -p /boot && mount -t tmpfs -o size=200m nixfleet-boot /boot")
    agent.succeed("head -c 150m /dev/zero > /boot/fill")
    fleet_commit({"flake.nix": "{ outputs = { self }: { }; }\n", "target": "same"}, "switch on a full /boot")
    since = send_command("agent", "pull-switch")
    status = wait_status("agent", "pull-switch", since, timeout=300)
    assert status["exit_code"] == 2, status
    assert status["message"].startswith(
        "preflight: not enough free space for a switch: /boot has 52428800 bytes free (50.0 MiB)"
    ), status
    assert not any(line.startswith("nixos-rebuild-shim") for line in output_lines("agent", since))
    agent.succeed("rm /boot/fill")
    switch_to("same")
    agent.succeed("umount /boot")

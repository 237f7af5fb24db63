# ruff: noqa: F821 - the NixOS test driver provides start_all, subtest, the machines and the helpers
# (7) Health-gated switches: the rebuild shim switches to a specialisation pre-built in the VM's
# store and points the real system profile at it (nix-env --set), as nixos-rebuild does. The
# "broken" specialisation's fleet-app.service fails a second after it started: root's checks see
# it, root activates the previous generation again (real nix-env, real switch-to-configuration),
# the old configuration is active afterwards, the dashboard hears what failed and that the host was
# rolled back, and the commit is refused; a healthy specialisation then switches once the agent
# confirmed its new registration.
TOKEN = "vm-health-token"
BOOTED = "/run/booted-system"


def current_system():
    return agent.succeed("readlink -f /run/current-system").strip()


def switch_to(target, command="pull-switch"):
    commit = fleet_commit({"flake.nix": "{ outputs = { self }: { }; }\n", "target": target}, f"switch to {target}")
    since = send_command("agent", command)
    return commit, since, wait_status("agent", command, since, timeout=600)


start_all()
server.wait_for_unit("fleet-git.service")
fleet_commit({"flake.nix": "{ outputs = { self }: { }; }\n", "target": "none"}, "initial")
start_dashboard(TOKEN)
write_secret(agent, TOKEN_FILE, TOKEN)
agent.succeed("systemctl restart nixfleet-agent.service")
wait_registered("agent")
agent.wait_for_unit("nixfleet-agent-privileged.path")
agent.wait_for_unit("fleet-app.service")
booted = agent.succeed(f"readlink -f {BOOTED}").strip()

with subtest("a configuration whose service fails is rolled back, and the old one is active again"):
    pid = agent_pid(agent)
    commit, since, status = switch_to("broken")
    assert status["status"] == "error", status
    message = status["message"]
    assert "fleet-app.service" in message and "rolled back to the previous generation" in message, message
    assert f"commit {commit[:7]} is refused" in message, message
    lines = output_lines("agent", since)
    assert any("health: FAIL" in line and "fleet-app.service" in line for line in lines), lines
    assert current_system() == booted, "the previous generation is not the running system"
    agent.succeed(f"test \"$(readlink -f /nix/var/nix/profiles/system)\" = {booted}")
    agent.succeed("test \"$(cat /etc/fleet-target)\" = base")
    agent.wait_for_unit("fleet-app.service")

with subtest("the same commit is refused until a newer one"):
    # root restarted the agent after the rollback (so it runs the old configuration's agent)
    agent.wait_until_succeeds(f"test \"$(systemctl show --value -p MainPID nixfleet-agent.service)\" != {pid}")
    wait_registered("agent")
    since = send_command("agent", "switch")
    status = wait_status("agent", "switch", since, timeout=300)
    assert status["exit_code"] == 2 and status["message"].startswith(f"bad_commit: commit {commit}"), status

with subtest("a healthy configuration switches once the agent confirmed"):
    _, since, status = switch_to("fine")
    assert status["status"] == "ok", (status, output_lines("agent", since))
    assert any("the agent registered again" in line for line in output_lines("agent", since))
    agent.succeed("test \"$(cat /etc/fleet-target)\" = fine")
    assert current_system() != booted

# ruff: noqa: F821 - the NixOS test driver provides start_all, subtest, the machines and the helpers
# (5) What a compromised agent can make root do: the poisoned-commit scenario of issue 11. A
# commit authored in the agent's own clone (adding a root SSH key and a `path:/etc/ssh` input),
# named in a well-formed request, is refused by root with its reason on the dashboard, and root
# builds nothing; a directory where the request belongs does not make the path unit loop; the
# next published commit switches as usual, from root's own clone.

TOKEN = "vm-root-boundary-token"
CLONE = "/var/lib/private/nixfleet-agent/repo"
ROOT_CLONE = "/var/lib/nixfleet-agent-privileged/root/repo"
RESULTS = "/var/lib/nixfleet-agent-privileged/results"
PRIVILEGED = "/var/lib/private/nixfleet-agent/privileged"
FLAKE = "{ outputs = { self }: { }; }\n"
POISONED_FLAKE = '{ inputs.keys.url = "path:/etc/ssh"; outputs = { self, keys }: { }; }\n'


def agent_uid() -> str:
    return agent.succeed(f"stat -c %u {CLONE}").strip()


def as_agent(script: str, owned: str) -> None:
    """What the agent's uid could do in its own state dir (done as root, then given to it)."""
    agent.succeed(f"{script} && chown -hR {agent_uid()}:{agent_uid()} {owned}")


def git_in(repo: str) -> str:
    return f"git -c safe.directory={repo} -c core.hooksPath=/dev/null -c user.name=evil -c user.email=evil@x -C {repo}"


start_all()
server.wait_for_unit("fleet-git.service")
published = fleet_commit({"flake.nix": FLAKE, "target": "none"}, "initial")
start_dashboard(TOKEN)
write_secret(agent, TOKEN_FILE, TOKEN)
agent.succeed("systemctl restart nixfleet-agent.service")
wait_registered("agent")
agent.wait_for_unit("nixfleet-agent-privileged.path")
agent.wait_until_succeeds(f"test \"$({git_in(CLONE)} rev-parse HEAD)\" = {published}", timeout=WAIT)

with subtest("a commit the agent authored is refused, with root's reason at the dashboard"):
    as_agent(
        f"printf %s '{POISONED_FLAKE}' > {CLONE}/flake.nix && echo same > {CLONE}/target"
        f" && echo '{{ users.users.root.openssh.authorizedKeys.keys = [ \"ssh-ed25519 AAAA evil\" ]; }}'"
        f" > {CLONE}/root-key.nix && {git_in(CLONE)} add -A && {git_in(CLONE)} commit -q -m 'let me in'",
        CLONE,
    )
    poisoned = agent.succeed(f"{git_in(CLONE)} rev-parse HEAD").strip()
    since = send_command("agent", "switch")
    status = wait_status("agent", "switch", since)
    assert status["exit_code"] == 2, status
    expected = f"published: commit {poisoned} is not in main of git://server/fleet.git"
    assert status["message"].startswith(expected), status
    lines = output_lines("agent", since)
    assert not any(line.startswith("nixos-rebuild-shim") for line in lines), lines
    agent.fail(f"git -C {ROOT_CLONE} cat-file -e {poisoned}")
    agent.succeed("test \"$(cat /etc/fleet-target 2>/dev/null || echo none)\" = none")
    agent.fail("grep -rq 'AAAA evil' /etc/ssh")

with subtest("a directory where the request belongs is moved aside once, no trigger loop"):
    as_agent(f"mkdir -p -m 0700 {PRIVILEGED} && mkdir -m 0700 {PRIVILEGED}/request.json", PRIVILEGED)
    agent.wait_until_succeeds(f"test ! -e {PRIVILEGED}/request.json", timeout=WAIT)
    agent.wait_until_succeeds("systemctl show -p ActiveState --value nixfleet-agent-privileged.service"
                              " | grep -Eq '^(inactive|failed)$'", timeout=WAIT)
    assert agent.succeed("systemctl show -p ActiveState --value nixfleet-agent-privileged.path").strip() == "active"
    assert agent.succeed("systemctl show -p Result --value nixfleet-agent-privileged.path").strip() == "success"
    rejected = json.loads(agent.succeed(f"cat {RESULTS}/rejected.json"))
    assert "is a directory, not a file" in rejected["error"], rejected

with subtest("the next published commit switches, built from root's own clone"):
    commit = fleet_commit({"flake.nix": FLAKE, "target": "same"}, "switch to same")
    since = send_command("agent", "pull-switch")
    status = wait_status("agent", "pull-switch", since, timeout=300)
    assert status["exit_code"] == 0, status
    lines = output_lines("agent", since)
    assert any(line.startswith("nixos-rebuild-shim uid=0 ") and f"{ROOT_CLONE}?ref=main&rev={commit}" in line
               for line in lines), lines
    agent.succeed("test \"$(cat /etc/fleet-target)\" = same")
    output_log = agent.succeed(f"ls -t {RESULTS}/*/output.log | head -n1").strip()
    assert agent.succeed(f"stat -c %a {output_log}").strip() == "600"

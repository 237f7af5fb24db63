# ruff: noqa: F821 - the NixOS test driver provides start_all, subtest, the machines and the helpers
# (2) The agent's isolated clone, fed by the git daemon on `server`: first clone, a pull after
# the branch was force-pushed, and a corrupted clone moved aside and cloned again.
TOKEN = "vm-repository-token"
REPO = "/var/lib/private/nixfleet-agent/repo"
FLAKE = "{ outputs = { self }: { }; }\n"


def agent_head():
    # root reads a clone owned by the agent's dynamic user: trust exactly that directory
    return agent.succeed(f"git -c safe.directory={REPO} -C {REPO} rev-parse HEAD").strip()


start_all()
server.wait_for_unit("fleet-git.service")
first = fleet_commit({"flake.nix": FLAKE, "hosts/agent.nix": "{ }\n"}, "first")
start_dashboard(TOKEN)
write_secret(agent, TOKEN_FILE, TOKEN)
agent.succeed("systemctl restart nixfleet-agent.service")

with subtest("first clone"):
    agent.wait_until_succeeds(f"test \"$(git -c safe.directory={REPO} -C {REPO} rev-parse HEAD)\" = {first}", timeout=WAIT)
    assert wait_registered("agent")["register"]["generation"] in ("", first[:7])

with subtest("pull after a force-push"):
    server.succeed(
        f"cd {FLEET_WORK} && printf '# rewritten\\n' >> hosts/agent.nix && git add -A"
        " && git -c user.name=t -c user.email=t@t commit -q --amend -m rewritten && git push -q -f origin HEAD:main"
    )
    rewritten = server.succeed(f"git -C {FLEET_WORK} rev-parse HEAD").strip()
    assert rewritten != first
    status = wait_status("agent", "pull", send_command("agent", "pull"))
    assert status["exit_code"] == 0, status
    assert agent_head() == rewritten
    agent.succeed(f"grep -q rewritten {REPO}/hosts/agent.nix")

with subtest("a corrupt clone is moved aside and cloned again"):
    agent.succeed(f"find {REPO}/.git/objects -type f -delete")
    status = wait_status("agent", "pull", send_command("agent", "pull"))
    assert status["exit_code"] == 0, status
    assert agent_head() == rewritten
    agent.succeed("test -d /var/lib/private/nixfleet-agent/repo.broken")

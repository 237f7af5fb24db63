"""Health-gated switches under a real systemd (nspawn): the agent in the golden units, root's oneshot
started by the path unit, a stand-in nixos-rebuild whose generations are real system-profile
symlinks (/nix/var/nix/profiles/system-N-link) and each install their own ``fleet-app.service``.
A generation whose unit fails is rolled back within the grace period and the previous generation's
unit is active again; the dashboard gets one final status saying so; the same commit is refused; a
newer commit switches (and only after the agent re-registered, which it confirms to root)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard import Dashboard
from support import toml_dumps
from systier import agenthost, agentwheel, gitserver, units
from systier.agenthost import AGENT_UNIT, PATH_UNIT, RESULTS_DIR, AgentHost
from systier.container import Container
from systier.waiting import wait_for

TOKEN = "systier-health-token-7c41"
HOST = agenthost.HOSTNAME
GRACE = 15
PROFILE = "/nix/var/nix/profiles/system"

# nixos-rebuild switch: build generation N (a directory with bin/switch-to-configuration that
# installs fleet-app.service, healthy or not per /etc/nixfleet-test/next-gen, or with "boot" only
# records the boot default), point the system profile at it with nix-env and activate it, as the
# real one does.
REBUILD = r"""#!/bin/sh
echo "nixos-rebuild-shim uid=$(id -u) args=$*"
next=$(cat /etc/nixfleet-test/next-gen 2>/dev/null || echo good)
store=/var/lib/fake-store
mkdir -p "$store"
n=$(ls "$store" | wc -l); n=$((n + 1))
gen="$store/gen$n-$next"
mkdir -p "$gen/bin"
if [ "$next" = bad ]; then exec_start="/bin/sh -c 'exit 3'"; else exec_start="/bin/sleep infinity"; fi
cat > "$gen/bin/switch-to-configuration" <<EOF
#!/bin/sh
# boot: only the boot loader's default (the health gate points it back during the grace period)
echo "$gen" > /run/fleet-boot-default
if [ "\$1" = boot ]; then echo "boot default $gen"; exit 0; fi
echo "activating $gen"
# every generation installs its agent configuration and unit; "nourl" names no dashboard
if [ "$next" = nourl ]; then
  sed 's|^url = .*|url = "ws://127.0.0.1:9/ws"|' /etc/nixfleet-test/agent.toml.good > /etc/nixfleet-agent/config.toml
  { cat /etc/nixfleet-test/agent.service.good; echo "# generation $n"; } > /etc/systemd/system/nixfleet-agent.service
else
  cp /etc/nixfleet-test/agent.toml.good /etc/nixfleet-agent/config.toml
  cp /etc/nixfleet-test/agent.service.good /etc/systemd/system/nixfleet-agent.service
fi
printf '[Unit]\nDescription=fleet app of $gen\n[Service]\nExecStart=%s\n' "$exec_start" > /etc/systemd/system/fleet-app.service
echo "$gen" > /run/fleet-generation
systemctl daemon-reload
systemctl restart fleet-app.service
EOF
chmod +x "$gen/bin/switch-to-configuration"
/usr/local/sbin/nix-env -p /nix/var/nix/profiles/system --set "$gen" || exit 1
"$gen/bin/switch-to-configuration" switch
"""


@pytest.fixture(scope="module")
def fleet(exchange_dir: Path, system_container: Container) -> tuple[gitserver.FleetRepo, str]:
    repo = gitserver.FleetRepo(exchange_dir / "health", "/srv/exchange/health")
    repo.create()
    return repo, repo.serve(system_container)


@pytest.fixture(scope="module")
def host(system_container: Container, exchange_dir: Path, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str],
         golden_dir: Path) -> Iterator[AgentHost]:
    box = system_container
    wheel, commit = agentwheel.build(exchange_dir / "build-health")  # test_system_agent builds in build/
    agent = agenthost.install(box, wheel_host=wheel, exchange_host=exchange_dir, exchange_inside="/srv/exchange",
                              url=dash.url, repo_url=fleet[1], token=TOKEN, golden_dir=golden_dir,
                              source_commit=commit)
    config: dict[str, object] = tomllib.loads(box.read_file(units.CONFIG_PATH))
    assert isinstance(config.get("health"), dict), "the golden TOML renders [health]"
    config["health"] = {**config["health"], "grace_period": GRACE, "units": ["fleet-app.service"]}  # type: ignore[dict-item]
    box.write_file(units.CONFIG_PATH, toml_dumps(config))
    box.write_file(units.SHIM_PATH, REBUILD, mode=0o755)
    box.run("cp", units.CONFIG_PATH, "/etc/nixfleet-test/agent.toml.good")
    box.run("cp", f"/etc/systemd/system/{AGENT_UNIT}", "/etc/nixfleet-test/agent.service.good")
    box.write_file("/etc/nixfleet-test/next-gen", "good\n")
    box.run("mkdir", "-p", "/nix/var/nix/profiles")
    box.run(units.SHIM_PATH, "first-generation")  # generation 1, healthy, active
    box.systemctl("restart", AGENT_UNIT)
    since = dash.mark()
    dash.wait_message("register", HOST, since=since, timeout=30)
    yield agent
    box.systemctl("stop", AGENT_UNIT, PATH_UNIT, "fleet-app.service", check=False)
    box.write_file(units.SHIM_PATH, units.SHIM_SOURCE.read_text(), mode=0o755)
    box.run("rm", "-rf", "/nix/var/nix/profiles", "/var/lib/fake-store", "/etc/systemd/system/fleet-app.service",
            check=False)


def generation(box: Container) -> str:
    return box.read_file("/run/fleet-generation").strip()


def status_of(dash: Dashboard, command: str, since: int, timeout: float = GRACE + 60) -> dict[str, object]:
    return dash.wait_message("status", HOST, since=since, timeout=timeout,
                             where=lambda r: r.payload.get("command") == command).payload


def lines(dash: Dashboard, since: int) -> list[str]:
    return [str(r.payload.get("line", "")) for r in dash.messages("output", HOST, since=since)]


def test_a_generation_whose_unit_fails_is_rolled_back_and_its_commit_refused(
        host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]) -> None:
    box = host.box
    repo, _ = fleet
    pid = host.agent_pid()
    first = generation(box)
    assert first.endswith("gen1-good") and box.run("readlink", "-f", PROFILE).stdout.strip() == first
    box.write_file("/etc/nixfleet-test/next-gen", "bad\n")
    bad = repo.commit({"hosts/systier.nix": "{ app = \"broken\"; }\n"}, "a broken app")
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    status = status_of(dash, "pull-switch", since)
    assert status["status"] == "error", status
    message = str(status["message"])
    assert message.startswith("health: unit fleet-app.service:") and "rolled back to the previous generation" in message
    assert f"commit {bad[:7]} is refused" in message
    seen = lines(dash, since)
    assert any("health: FAIL unit fleet-app.service" in line for line in seen), seen
    # the previous generation is active again: its unit runs, the profile points at it
    assert generation(box) == first
    assert box.run("readlink", "-f", PROFILE).stdout.strip() == first
    wait_for(lambda: box.systemctl("is-active", "fleet-app.service", check=False).stdout.strip() == "active", 20,
             "the previous generation's fleet-app.service to be active again")
    results = [json.loads(box.read_file(p)) for p in
               box.run("sh", "-c", f"ls {RESULTS_DIR}/*/result.json").stdout.split()]
    [failed] = [r for r in results if r.get("health") == "failed"]
    assert failed["rolled_back"] is True and [e["commit"] for e in failed["bad_commits"]] == [bad]
    # root restarted the agent after the rollback; it registers again and the same commit is refused
    wait_for(lambda: host.agent_pid() not in (0, pid), 60, "root to restart the agent after the rollback")
    dash.wait_message("heartbeat", HOST, since=dash.mark(), timeout=60)  # the restarted agent is registered
    since = dash.mark()
    dash.send_command(HOST, "switch")
    refused = status_of(dash, "switch", since, timeout=60)
    assert refused["exit_code"] == 2 and str(refused["message"]).startswith(f"bad_commit: commit {bad}"), refused


def test_a_newer_commit_switches_once_the_agent_confirmed(
        host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]) -> None:
    box = host.box
    repo, _ = fleet
    box.write_file("/etc/nixfleet-test/next-gen", "good\n")
    repo.commit({"hosts/systier.nix": "{ app = \"fixed\"; }\n"}, "the fix")
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    status = status_of(dash, "pull-switch", since)
    assert status["status"] == "ok", (status, lines(dash, since))
    assert generation(box).endswith("-good") and not generation(box).endswith("gen1-good")
    assert box.systemctl("is-active", "fleet-app.service", check=False).stdout.strip() == "active"
    seen = lines(dash, since)
    assert any("health: the agent registered again" in line for line in seen), seen


def test_a_generation_whose_agent_cannot_reach_the_dashboard_is_rolled_back_by_root(
        host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]) -> None:
    """The new generation's agent has a wrong dashboard URL: the running agent restarts into it
    (its service definition changed), never registers, root rolls back alone and restarts the
    agent, which runs the old configuration again and reports what happened."""
    box = host.box
    repo, _ = fleet
    before = generation(box)
    box.write_file("/etc/nixfleet-test/next-gen", "nourl\n")
    lost = repo.commit({"hosts/systier.nix": "{ dashboard = \"gone\"; }\n"}, "a wrong dashboard URL")
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    status = status_of(dash, "pull-switch", since, timeout=GRACE + 120)
    assert status["status"] == "error", status
    message = str(status["message"])
    assert "reconnect: the agent did not register with the dashboard again" in message, message
    assert "rolled back to the previous generation" in message and f"commit {lost[:7]} is refused" in message
    assert generation(box) == before
    assert 'url = "ws://127.0.0.1:9/ws"' not in box.read_file(units.CONFIG_PATH)
    seen = lines(dash, since)
    assert any("the agent restarts so that the new agent confirms" in line for line in seen), seen
    box.write_file("/etc/nixfleet-test/next-gen", "good\n")


def test_root_killed_during_the_grace_period_is_rolled_back_by_its_stop_post(
        host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]) -> None:
    """systemctl kill of root's oneshot while the checks wait: ExecStopPost= (--finalize) finds
    the pending record, goes back to the previous generation, remembers the commit, and the agent
    gets one final status saying so; the boot default was the previous generation meanwhile."""
    box = host.box
    repo, _ = fleet
    before = generation(box)
    box.write_file("/etc/nixfleet-test/next-gen", "bad\n")
    broken = repo.commit({"hosts/systier.nix": "{ app = \"broken again\"; }\n"}, "broken while root dies")
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    wait_for(lambda: any("the previous generation is the boot default" in line for line in lines(dash, since)),
             GRACE + 60, "root to start the health checks")
    assert box.read_file("/run/fleet-boot-default").strip() == before and generation(box).endswith("-bad")
    box.systemctl("kill", "--signal=KILL", "nixfleet-agent-privileged.service")
    status = status_of(dash, "pull-switch", since)
    assert status["status"] == "error", status
    message = str(status["message"])
    assert message.startswith("health: interrupted: root was stopped (SERVICE_RESULT=signal"), message
    assert f"rolled back to the previous generation {before}" in message and f"commit {broken[:7]}" in message
    assert generation(box) == before and box.run("readlink", "-f", PROFILE).stdout.strip() == before
    wait_for(lambda: box.systemctl("is-active", "fleet-app.service", check=False).stdout.strip() == "active", 20,
             "the previous generation's fleet-app.service to be active again")
    assert any("health: the switch of" in line and "was interrupted" in line for line in lines(dash, since))
    box.write_file("/etc/nixfleet-test/next-gen", "good\n")

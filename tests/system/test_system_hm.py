"""Home Manager on Linux under a real systemd user manager (issue 13 item 2): the agent runs in the
user unit modules/home-manager.nix renders; a switch runs in its own transient user unit, so a
restart of the agent's unit mid-switch no longer kills home-manager (it used to share the agent's
control group), the agent that comes back reports the result; a transient unit killed mid-switch
ends the operation with a final error naming how it ended, and the agent takes the next command."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard import Dashboard
from systier import agentwheel, gitserver, hmhost
from systier.container import Container
from systier.hmhost import AGENT_UNIT, HOSTNAME, HmHost
from systier.rootfs import VENV_DIR
from systier.waiting import wait_for

TOKEN = "systier-hm-token-5c1f7a20-never-logged"


@pytest.fixture(scope="module")
def fleet(exchange_dir: Path, system_container: Container) -> tuple[gitserver.FleetRepo, str]:
    repo = gitserver.FleetRepo(exchange_dir, "/srv/exchange")
    if not repo.bare.exists():
        repo.create()
    return repo, repo.serve(system_container)


@pytest.fixture(scope="module")
def hm(system_container: Container, exchange_dir: Path, dash: Dashboard,
       fleet: tuple[gitserver.FleetRepo, str]) -> Iterator[HmHost]:
    wheel, _ = agentwheel.build(exchange_dir / "build-hm")
    host = hmhost.install(system_container, wheel_host=wheel, exchange_host=exchange_dir,
                          exchange_inside="/srv/exchange", url=dash.url, repo_url=fleet[1], token=TOKEN)
    dash.wait_message("register", HOSTNAME, timeout=40)
    yield host
    host.systemctl("stop", AGENT_UNIT, check=False)


def lines_since(dash: Dashboard, since: int) -> list[str]:
    return [str(r.payload.get("line", "")) for r in dash.messages("output", HOSTNAME, since=since)]


def start_switch(hm: HmHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str], seconds: int,
                 change: str) -> int:
    hmhost.set_switch(hm.box, seconds)
    fleet[0].commit({"hosts/systier-hm.nix": f"{{ change = \"{change}\"; }}\n"}, change)
    since = dash.mark()
    dash.send_command(HOSTNAME, "pull-switch")
    dash.wait_message("output", HOSTNAME, since=since, timeout=60,
                      where=lambda r: str(r.payload.get("line", "")).startswith("home-manager-shim step 1/"))
    return since


def final_status(dash: Dashboard, since: int, timeout: float = 60) -> dict[str, object]:
    return dash.wait_message("status", HOSTNAME, since=since, timeout=timeout,
                             where=lambda r: r.payload.get("command") == "pull-switch").payload


def test_switch_survives_a_restart_of_the_agents_user_unit(
    hm: HmHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]
) -> None:
    since = start_switch(hm, dash, fleet, 6, "restart mid-switch")
    first = hm.wait_agent()
    hm.systemctl("restart", AGENT_UNIT)  # what activation of a changed unit, or an admin, does
    hm.wait_agent(not_pid=first)
    status = final_status(dash, since)
    assert status["exit_code"] == 0, status
    lines = lines_since(dash, since)
    [unit] = [m.group(1) for line in lines if (m := re.search(r"in the transient unit (\S+)", line))]
    shim = [line for line in lines if line.startswith("home-manager-shim uid=")]
    assert shim and shim[0].split(" args=")[0].endswith(f"/{unit}"), f"not in {unit}'s own cgroup: {shim}"
    steps = [line for line in lines if line.startswith("home-manager-shim step ")]
    assert steps == [f"home-manager-shim step {i}/6" for i in range(1, 7)], steps
    assert "home-manager-shim done exit=0" in lines, lines
    statuses = [r for r in dash.messages("status", HOSTNAME, since=since) if r.payload.get("command") == "pull-switch"]
    assert len(statuses) == 1, "the result was reported more than once"
    # the wrapper wrote the result just before it exited; then the unit stops and is collected
    wait_for(lambda: hm.switch_units() == [], 20, f"{unit} to be collected",
             detail=lambda: hm.systemctl("status", unit, check=False).stdout)


def test_killed_switch_unit_ends_with_a_final_error_and_the_agent_goes_on(
    hm: HmHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]
) -> None:
    since = start_switch(hm, dash, fleet, 30, "killed mid-switch")
    [unit] = hm.switch_units()
    assert watch_verdict(hm, unit) == "None"  # running: the follower's liveness check waits
    hm.systemctl("kill", "--signal=KILL", unit)
    status = final_status(dash, since)
    assert status["exit_code"] != 0, status
    assert unit in str(status.get("message")), status
    assert "SERVICE_RESULT=signal" in str(status.get("message")), status
    # the agent is not busy any more: the next switch runs and succeeds
    since = start_switch(hm, dash, fleet, 1, "after the kill")
    assert final_status(dash, since)["exit_code"] == 0
    wait_for(lambda: hm.switch_units() == [], 20, "the killed and the finished unit to be collected",
             detail=lambda: hm.systemctl("list-units", "--all", "nixfleet-agent-switch-*", check=False).stdout)
    # had ExecStopPost= not written a result either, the follower's check (real systemctl) ends it
    assert watch_verdict(hm, unit) == (f"the switch unit {unit} is gone without a result "
                                       "(it never started, or ended and was collected without writing one)")


def watch_verdict(hm: HmHost, unit: str) -> str:
    """What liveness.UnitWatch says about ``unit`` after two checks, asked as the agent's user."""
    probe = ("import sys; from nixfleet_agent.ops import liveness; "
             "w = liveness.UnitWatch(sys.argv[1], every=0); w.ended(); print(w.ended())")
    return hm.user(f"{VENV_DIR}/bin/python3", "-c", probe, unit).stdout.strip()


def test_stop_reaches_home_manager_in_its_unit(hm: HmHost, dash: Dashboard,
                                               fleet: tuple[gitserver.FleetRepo, str]) -> None:
    since = start_switch(hm, dash, fleet, 30, "stopped mid-switch")
    [unit] = hm.switch_units()
    agent = hm.agent_pid()
    dash.send_command(HOSTNAME, "stop")
    status = final_status(dash, since)
    assert status["status"] == "stopped" and "SIGTERM" in str(status["message"]), status
    assert hm.agent_pid() == agent, "stop reached the agent"
    wait_for(lambda: hm.switch_units() == [], 20, f"{unit} to end after stop",
             detail=lambda: hm.systemctl("status", unit, check=False).stdout)

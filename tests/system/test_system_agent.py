"""The agent under a real systemd, in the units the NixOS module renders (tests/golden/, store
paths adapted): it starts, registers and heartbeats as an unprivileged dynamic user; its token
comes only through the credential; systemd restarts it after a crash; a switch goes through the
root path unit and survives the agent being stopped; the root side refuses bad requests, builds
only commits the fleet published (from its own clone), keeps build logs from other users, and
clears whatever is not a request from the watched path without a re-trigger loop."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard import (
    Dashboard,  # tests/dashboard.py (tests/conftest.py puts tests/ on sys.path)
)
from systier import agenthost, agentwheel, gitserver, units
from systier.agenthost import (
    AGENT_UNIT,
    PATH_UNIT,
    PRIV_UNIT,
    RESULTS_DIR,
    ROOT_CLONE,
    STATE_DIR,
    AgentHost,
)
from systier.container import Container
from systier.waiting import wait_for

TOKEN = "systier-token-3b9d0e55-never-logged"
HOST = agenthost.HOSTNAME
DYNAMIC_UIDS = range(61184, 65520)


@pytest.fixture(scope="module")
def fleet(exchange_dir: Path, system_container: Container) -> tuple[gitserver.FleetRepo, str]:
    repo = gitserver.FleetRepo(exchange_dir, "/srv/exchange")
    repo.create()
    return repo, repo.serve(system_container)


@pytest.fixture(scope="module")
def host(
    system_container: Container, exchange_dir: Path, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str],
    golden_dir: Path,
) -> Iterator[AgentHost]:
    wheel, commit = agentwheel.build(exchange_dir / "build")
    agent = agenthost.install(
        system_container, wheel_host=wheel, exchange_host=exchange_dir, exchange_inside="/srv/exchange",
        url=dash.url, repo_url=fleet[1], token=TOKEN, golden_dir=golden_dir, source_commit=commit,
    )
    dash.wait_message("register", HOST, timeout=30)
    yield agent
    system_container.systemctl("stop", AGENT_UNIT, PATH_UNIT, check=False)


def agent_pid(box: Container) -> int:
    return box.wait_unit_active(AGENT_UNIT, timeout=30)


def status_field(box: Container, pid: int, name: str) -> str:
    for line in box.read_file(f"/proc/{pid}/status").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"/proc/{pid}/status has no {name}")


# ---------------------------------------------------------------------------- the agent unit


def test_installed_units_are_the_golden_ones_but_for_store_paths(host: AgentHost, golden_dir: Path) -> None:
    """What runs here is what NixOS runs: every line without a store path is unchanged."""
    for path in units.golden_units(golden_dir):
        golden = path.read_text().splitlines()
        installed = host.box.read_file(f"/etc/systemd/system/{path.name}").splitlines()
        assert len(installed) == len(golden), path.name
        changed = [(g, i) for g, i in zip(golden, installed) if g != i and "/nix/store/" not in g]
        assert changed == [], f"{path.name}: lines changed beyond store paths: {changed}"
        assert not any("/nix/store/" in line for line in installed), f"{path.name}: store path left"


def test_agent_registers_and_heartbeats(
    host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]
) -> None:
    register = dash.wait_message("register", HOST, timeout=30).payload
    assert register["host_type"] == "nixos"
    assert register["repo_url"] == fleet[1]
    assert register["source_commit"] == (host.source_commit or "unknown")
    generation = fleet[0].head()[:7]
    since = dash.mark()
    dash.wait_message("heartbeat", HOST, since=since, timeout=10)
    beat = dash.wait_message("heartbeat", HOST, since=dash.mark(), timeout=10,
                             where=lambda r: r.payload.get("generation") == generation).payload
    assert beat["metrics"] is not None


def test_agent_runs_unprivileged_without_a_way_to_root(host: AgentHost) -> None:
    box = host.box
    pid = agent_pid(box)
    uid = int(status_field(box, pid, "Uid").split()[0])
    assert uid in DYNAMIC_UIDS, f"agent runs as uid {uid}, not a dynamic user"
    assert status_field(box, pid, "NoNewPrivs") == "1"
    assert int(status_field(box, pid, "CapEff"), 16) == 0
    assert int(status_field(box, pid, "CapBnd"), 16) == 0
    assert box.run("sh", "-c", "command -v sudo", check=False).returncode != 0, "sudo is installed"


def test_state_dir_is_private_to_the_agent(host: AgentHost, dash: Dashboard) -> None:
    box = host.box
    pid = agent_pid(box)
    uid = status_field(box, pid, "Uid").split()[0]
    dash.wait_message("heartbeat", HOST, since=dash.mark(), timeout=10)
    assert box.run("stat", "-c", "%a %u", STATE_DIR).stdout.split() == ["700", uid]
    assert box.run("stat", "-c", "%a", "/var/lib/private").stdout.strip() == "700"
    # everything the agent created is private: no file readable or writable by group/others
    loose = box.run("find", STATE_DIR, "-perm", "/077", "-not", "-type", "l").stdout.split()
    assert loose == [], f"files readable by others: {loose}"


def test_token_arrives_only_through_the_credential(host: AgentHost, dash: Dashboard) -> None:
    box = host.box
    pid = agent_pid(box)
    dash.wait_message("heartbeat", HOST, since=dash.mark(), timeout=10)  # authenticated with it
    places = {
        "systemctl show": box.systemctl("show", AGENT_UNIT).stdout,
        "systemctl cat": box.systemctl("cat", AGENT_UNIT).stdout,
        "environ": box.run("cat", f"/proc/{pid}/environ").stdout,
        "cmdline": box.run("cat", f"/proc/{pid}/cmdline").stdout,
        "journal": box.run("journalctl", "--no-pager", "-b", "-o", "cat").stdout,
        "config": box.read_file("/etc/nixfleet-agent/config.toml"),
        "state dir": box.run("grep", "-rl", "--", TOKEN, STATE_DIR, check=False).stdout,
        "dashboard": json.dumps([r.raw for r in dash.records]),
    }
    leaked = [where for where, text in places.items() if TOKEN in text]
    assert leaked == [], f"token visible in: {leaked}"
    assert "level=info" in places["journal"], "journal check read nothing"
    creds = box.run("cat", f"/run/credentials/{AGENT_UNIT}/token").stdout
    assert creds == TOKEN


def test_killed_agent_is_restarted_and_registers_again(host: AgentHost, dash: Dashboard) -> None:
    box = host.box
    pid = agent_pid(box)
    since = dash.mark()
    box.run("kill", "-9", str(pid))
    # RestartSec= in the golden unit decides the delay; the wait covers it with margin
    new_pid = wait_for(lambda: (p := int(box.show(AGENT_UNIT, "MainPID") or 0)) not in (0, pid) and p,
                       40, "systemd to restart the killed agent", detail=lambda: box.journal(AGENT_UNIT))
    assert new_pid != pid
    dash.wait_message("register", HOST, since=since, timeout=30)


def test_security_report(host: AgentHost, capsys: pytest.CaptureFixture[str]) -> None:
    """Print `systemd-analyze security` of the agent's unit; upstream's unit scores 9.5 UNSAFE."""
    report = host.box.run("systemd-analyze", "security", "--no-pager", AGENT_UNIT, check=False, timeout=60).stdout
    with capsys.disabled():
        print(f"\n--- systemd-analyze security {AGENT_UNIT} (inside the container) ---\n{report}")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", report)
    assert match, f"no overall exposure level in:\n{report}"
    assert float(match.group(1)) < 5.0, f"the agent's unit is {match.group(2)} ({match.group(1)})"


# ---------------------------------------------------------------------------- privileged switch


def shim_lines(dash: Dashboard, since: int) -> list[str]:
    return [str(r.payload.get("line", "")) for r in dash.messages("output", HOST, since=since)]


def set_rebuild(box: Container, seconds: int, exit_code: int = 0) -> None:
    box.write_file("/etc/nixfleet-test/rebuild-seconds", f"{seconds}\n")
    box.write_file("/etc/nixfleet-test/rebuild-exit", f"{exit_code}\n")


def test_switch_goes_through_the_privileged_unit(
    host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]
) -> None:
    box = host.box
    repo, _ = fleet
    set_rebuild(box, 2)
    commit = repo.commit({"hosts/systier.nix": "{ }\n"}, "switch me")
    pid = agent_pid(box)
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    status = dash.wait_message("status", HOST, since=since, timeout=60,
                               where=lambda r: r.payload.get("command") == "pull-switch").payload
    assert status["exit_code"] == 0, status
    lines = shim_lines(dash, since)
    shim = [line for line in lines if line.startswith("nixos-rebuild-shim uid=")]
    assert shim, f"the shim's output never reached the dashboard: {lines}"
    assert shim[0].startswith("nixos-rebuild-shim uid=0 args=switch "), shim[0]
    assert f"?ref=main&rev={commit}#{HOST}" in shim[0], shim[0]
    assert "nixos-rebuild-shim step 2/2" in lines, "streamed output lost"
    # the dashboard completes a switch on a new registration; the package did not change, so
    # the agent re-registers without restarting
    dash.wait_message("register", HOST, since=since, timeout=30)
    assert agent_pid(box) == pid
    results = box.run("sh", "-c", f"ls {RESULTS_DIR}/*/result.json").stdout.split()
    assert results, "the root unit wrote no result.json"
    # built from root's own clone, and the log is the agent's alone (not 0644 any more)
    assert f"git+file://{ROOT_CLONE}?" in shim[0], shim[0]
    uid = status_field(box, pid, "Uid").split()[0]
    log = results[-1].replace("result.json", "output.log")
    assert box.run("stat", "-c", "%a %u", log).stdout.split() == ["600", uid]
    assert box.run("stat", "-c", "%a %u", RESULTS_DIR).stdout.split() == ["711", "0"]
    nobody = box.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", log, check=False)
    assert nobody.returncode != 0, "another user can read the build log"


def test_switch_that_changes_the_agent_restarts_it(
    host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]
) -> None:
    box = host.box
    repo, _ = fleet
    set_rebuild(box, 3)
    repo.commit({"hosts/systier.nix": "{ agent = 2; }\n"}, "new agent")
    pid = agent_pid(box)
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    dash.wait_message("output", HOST, since=since, timeout=60,
                      where=lambda r: str(r.payload.get("line", "")).startswith("nixos-rebuild-shim step 1/"))
    # what a switch installing a new agent package does on NixOS: a new unit definition
    unit = f"/etc/systemd/system/{AGENT_UNIT}"
    original = box.read_file(unit)
    box.write_file(unit, original + "# new agent package\n")
    box.systemctl("daemon-reload")
    try:
        status = dash.wait_message("status", HOST, since=since, timeout=60,
                                   where=lambda r: r.payload.get("command") == "pull-switch")
        assert status.payload["exit_code"] == 0, status.payload
        new_pid = wait_for(lambda: (p := int(box.show(AGENT_UNIT, "MainPID") or 0)) not in (0, pid) and p, 40,
                           "the agent to restart after a switch that changed it", detail=lambda: box.journal(AGENT_UNIT))
        assert new_pid != pid
        dash.wait_message("register", HOST, since=status.index + 1, timeout=30)
    finally:
        box.write_file(unit, original)
        box.systemctl("daemon-reload")


def test_switch_survives_the_agent_being_stopped(
    host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]
) -> None:
    box = host.box
    repo, _ = fleet
    set_rebuild(box, 6)
    repo.commit({"hosts/systier.nix": "{ slow = true; }\n"}, "slow switch")
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    dash.wait_message("output", HOST, since=since, timeout=60,
                      where=lambda r: str(r.payload.get("line", "")).startswith("nixos-rebuild-shim step 1/"))
    box.systemctl("stop", AGENT_UNIT)
    try:
        assert box.show(PRIV_UNIT, "ActiveState") in ("active", "activating"), "stopping the agent stopped the switch"
        stopped_at = dash.mark()
    finally:
        box.systemctl("start", AGENT_UNIT)
    status = dash.wait_message("status", HOST, since=stopped_at, timeout=60,
                               where=lambda r: r.payload.get("command") == "pull-switch").payload
    assert status["exit_code"] == 0, status
    # the restarted agent went on following the switch's output where the old one stopped
    lines = shim_lines(dash, since)
    assert "nixos-rebuild-shim done exit=0" in lines, lines
    steps = [line for line in lines if line.startswith("nixos-rebuild-shim step ")]
    assert steps == [f"nixos-rebuild-shim step {i}/6" for i in range(1, 7)], steps
    assert box.show(PRIV_UNIT, "Result") == "success"
    statuses = [r for r in dash.messages("status", HOST, since=since) if r.payload.get("command") == "pull-switch"]
    assert len(statuses) == 1, "the result was reported more than once"


@pytest.mark.parametrize(
    ("request_body", "culprit"),
    [
        ({"action": "rm-rf", "commit": "0" * 40}, "action"),
        ({"action": "switch", "commit": "HEAD; reboot"}, "commit"),
    ],
    ids=["disallowed-action", "malformed-commit"],
)
def test_root_side_refuses_bad_requests(host: AgentHost, request_body: dict[str, str], culprit: str) -> None:
    box = host.box
    request_id = f"bad-{culprit}-{int(time.time())}"
    body = json.dumps({"id": request_id, "flake_attr": HOST, **request_body})
    uid = status_field(box, agent_pid(box), "Uid").split()[0]
    box.sh(f"install -d -m 0700 -o {uid} {STATE_DIR}/privileged")
    # written as the agent would: a file of its user, renamed into place
    box.run("sh", "-ec", f"cd {STATE_DIR}/privileged; cat > .tmp; chown {uid}:{uid} .tmp; mv .tmp request.json",
            input=body)
    result_path = f"{RESULTS_DIR}/{request_id}/result.json"
    wait_for(lambda: box.run("test", "-e", result_path, check=False).returncode == 0, 30,
             f"the root side to answer {request_id}", detail=lambda: box.journal(PRIV_UNIT))
    result = json.loads(box.read_file(result_path))
    assert result["exit_code"] == 2, result
    assert culprit in result["error"], result
    log = box.run("cat", f"{RESULTS_DIR}/{request_id}/output.log", check=False).stdout
    assert "nixos-rebuild-shim" not in log, "a refused request ran nixos-rebuild"
    assert box.run("test", "-e", f"{STATE_DIR}/privileged/request.json", check=False).returncode != 0


def as_agent(box: Container, uid: str, script: str, owned: str) -> None:
    """What a compromised agent can do in its state dir: run ``script`` (as root: the agent's own
    uid cannot pass /var/lib/private from outside its unit), then give ``owned`` to the agent, so
    the result is what the agent itself could have made."""
    box.run("env", "HOME=/tmp", "GIT_AUTHOR_NAME=evil", "GIT_AUTHOR_EMAIL=evil@example.test",
            "GIT_COMMITTER_NAME=evil", "GIT_COMMITTER_EMAIL=evil@example.test", "sh", "-ec",
            f"{script}; chown -hR {uid}:{uid} {owned}")


def test_a_commit_the_agent_authored_is_refused_end_to_end(
    host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]
) -> None:
    """Issue 11, end to end: the agent's uid commits a root SSH key into its own clone; the
    switch it then asks for is refused by root, with root's reason on the dashboard."""
    box = host.box
    set_rebuild(box, 0)
    uid = status_field(box, agent_pid(box), "Uid").split()[0]
    clone = f"{STATE_DIR}/repo"
    git = f"git -c safe.directory={clone} -c core.hooksPath=/dev/null"
    box.write_file(f"{clone}/root-key.nix", '{ users.users.root.openssh.authorizedKeys.keys = [ "x" ]; }\n')
    as_agent(box, uid, f"cd {clone}; {git} add root-key.nix; {git} commit -q -m 'let me in'", clone)
    evil = box.run("git", "-c", f"safe.directory={clone}", "-C", clone, "rev-parse", "HEAD").stdout.strip()
    assert evil != fleet[0].head()
    since = dash.mark()
    dash.send_command(HOST, "switch")
    status = dash.wait_message("status", HOST, since=since, timeout=60,
                               where=lambda r: r.payload.get("command") == "switch").payload
    assert status["exit_code"] == 2, status
    assert str(status["message"]).startswith(f"published: commit {evil} is not in main of "), status
    assert not [line for line in shim_lines(dash, since) if line.startswith("nixos-rebuild-shim")]
    # the agent stays usable: a pull-switch resets its clone and switches the published head
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    status = dash.wait_message("status", HOST, since=since, timeout=60,
                               where=lambda r: r.payload.get("command") == "pull-switch").payload
    assert status["exit_code"] == 0, status
    dash.wait_message("register", HOST, since=since, timeout=30)


@pytest.mark.parametrize("kind", ["directory-request", "symlinked-request", "symlinked-privileged-dir"])
def test_what_is_not_a_request_leaves_the_watched_path_without_a_trigger_loop(host: AgentHost, kind: str) -> None:
    """The path unit fires while PathExists= holds. Root used to refuse a directory request.json
    and leave it there, so systemd started it again and again until the trigger limit failed the
    path unit (and with it every later switch). Now the thing is moved aside or unlinked once."""
    box = host.box
    assert box.show(PATH_UNIT, "ActiveState") == "active"
    uid = status_field(box, agent_pid(box), "Uid").split()[0]
    runs_before = box.run("journalctl", "--no-pager", "-o", "cat", "-u", PRIV_UNIT).stdout.count("event=rejected")
    privileged = f"{STATE_DIR}/privileged"
    if kind == "directory-request":
        as_agent(box, uid, f"mkdir -p -m 0700 {privileged}; mkdir -m 0700 {privileged}/request.json", privileged)
    elif kind == "symlinked-request":
        as_agent(box, uid, f"mkdir -p -m 0700 {privileged}; ln -s /etc/shadow {privileged}/.link; "
                           f"chown -h {uid}:{uid} {privileged}/.link; mv {privileged}/.link {privileged}/request.json",
                 privileged)
    else:
        as_agent(box, uid, f"rm -rf {privileged} /tmp/elsewhere; mkdir /tmp/elsewhere; echo '{{}}' > "
                           f"/tmp/elsewhere/request.json; ln -s /tmp/elsewhere {privileged}", privileged)
    watched = f"{privileged}/request.json"
    wait_for(lambda: box.run("test", "-e", watched, check=False).returncode != 0
             and box.show(PRIV_UNIT, "ActiveState") in ("inactive", "failed"), 30,
             f"the root unit to clear {watched}", detail=lambda: box.journal(PRIV_UNIT))
    assert box.show(PATH_UNIT, "ActiveState") == "active", box.systemctl("status", PATH_UNIT, check=False).stdout
    assert box.show(PATH_UNIT, "Result") == "success"  # not trigger-limit-hit
    runs = box.run("journalctl", "--no-pager", "-o", "cat", "-u", PRIV_UNIT).stdout.count("event=rejected")
    assert runs == runs_before + 1, f"the root unit ran {runs - runs_before} times for one {kind}"
    rejected = json.loads(box.read_file(f"{RESULTS_DIR}/rejected.json"))
    assert rejected["exit_code"] == 2 and rejected["error"].startswith("request: "), rejected
    assert box.run("test", "-e", "/etc/shadow").returncode == 0  # the link's target untouched
    if kind == "symlinked-privileged-dir":
        assert box.run("test", "-L", privileged, check=False).returncode != 0  # the link is gone
        assert box.run("test", "-e", "/tmp/elsewhere/request.json").returncode == 0  # nothing removed through it
        as_agent(box, uid, f"mkdir -m 0700 {privileged}", privileged)  # as the agent's next request would


def _pull_switch_until_building(box: Container, dash: Dashboard, repo: gitserver.FleetRepo, what: str) -> int:
    set_rebuild(box, 60)
    repo.commit({"hosts/systier.nix": f"{{ {what} = true; }}\n"}, what)
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    dash.wait_message("output", HOST, since=since, timeout=60,
                      where=lambda r: str(r.payload.get("line", "")).startswith("nixos-rebuild-shim step 1/"))
    return since


def _no_build_left(box: Container) -> None:
    wait_for(lambda: box.run("pgrep", "-f", "nixos-rebuild", check=False).returncode == 1, 30,
             "the stand-in nixos-rebuild to be gone", detail=lambda: box.run("ps", "axf", check=False).stdout)


def _next_switch_works(dash: Dashboard, box: Container) -> None:
    set_rebuild(box, 0)
    since = dash.mark()
    dash.send_command(HOST, "pull-switch")
    status = dash.wait_message("status", HOST, since=since, timeout=60,
                               where=lambda r: r.payload.get("command") == "pull-switch").payload
    assert status["exit_code"] == 0, status


def test_root_oneshot_killed_mid_switch_gives_a_final_error_and_the_agent_goes_on(
    host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str]
) -> None:
    """Issue 13: `systemctl kill` of the root oneshot in the middle of nixos-rebuild. Its
    ExecStopPost= (--finalize) writes the result the killed run left out; the agent reports it as
    the switch's final error and takes the next command."""
    box = host.box
    since = _pull_switch_until_building(box, dash, fleet[0], "killed")
    box.systemctl("kill", "--signal=SIGKILL", PRIV_UNIT)
    status = dash.wait_message("status", HOST, since=since, timeout=60,
                               where=lambda r: r.payload.get("command") == "pull-switch").payload
    assert status["status"] == "error" and status["exit_code"] == 1, status
    message = str(status["message"])
    assert "ended without a result (SERVICE_RESULT=signal, EXIT_CODE=killed, EXIT_STATUS=KILL)" in message, status
    _no_build_left(box)
    _next_switch_works(dash, box)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_stop_and_kill_from_the_dashboard_cancel_a_privileged_switch(
    host: AgentHost, dash: Dashboard, fleet: tuple[gitserver.FleetRepo, str], how: str
) -> None:
    box = host.box
    since = _pull_switch_until_building(box, dash, fleet[0], f"cancel-{how}")
    dash.send_command(HOST, how)
    status = dash.wait_message("status", HOST, since=since, timeout=60,
                               where=lambda r: r.payload.get("command") == "pull-switch").payload
    assert status["status"] == "stopped", status
    lines = shim_lines(dash, since)
    assert any("cancelled by stop/kill from the dashboard" in line for line in lines), lines
    assert "nixos-rebuild-shim done exit=0" not in lines
    _no_build_left(box)
    assert box.run("test", "-e", f"{STATE_DIR}/privileged/cancel.json", check=False).returncode != 0
    _next_switch_works(dash, box)

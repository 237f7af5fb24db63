"""An attached command whose agent was SIGKILLed is reported by the next agent, and its processes
do not outlive that (issue 13 item 4). Real agent processes, real signals, the reference dashboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from cmd_support import add_tests

from support import wait_for

HOLD = 'sleep 600 &\necho "leader=$$ child=$!"\nwait'


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie may stay unreaped in a container)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _group(pgid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    rest = fh.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(rest[2]) == pgid and rest[0] != b"Z":
                out.append(int(name))
    return out


def _records(state: Path) -> list[Path]:
    return sorted((state / "attached").glob("*.json"))


def _kill_mid_test(session, fleet_repo) -> tuple[Path, int, int]:
    """Start `test` with a script that holds a background child, SIGKILL the agent mid-way."""
    add_tests(fleet_repo, {"T01-hold.sh": HOLD})
    session.start()
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    mark = session.send("test")
    line = session.dash.wait_message("output", since=mark, where=lambda r: r.payload["line"].startswith("leader="),
                                     timeout=10).payload["line"]
    leader, child = (int(part.split("=")[1]) for part in line.split())
    wait_for(lambda: any(json.loads(p.read_text()).get("pid") == leader for p in _records(state)), 5,
             "the running child in the attached record")
    session.agent.kill()  # SIGKILL: no cleanup, no status
    return state, leader, child


def _tests_compartment(session, since: int) -> dict:
    hb = session.dash.wait_message("heartbeat", since=since,
                                   where=lambda r: r.payload["update_status"]["tests"]["status"] == "error")
    return hb.payload["update_status"]["tests"]


def test_sigkilled_agent_mid_test_reports_it_and_ends_the_group_on_next_start(session, fleet_repo) -> None:
    state, leader, child = _kill_mid_test(session, fleet_repo)
    assert _alive(leader) and _alive(child)  # the script and its child outlived their agent
    assert not [r for r in session.dash.messages("status") if r.payload.get("command") == "test"]
    mark = session.dash.mark()
    session.start()
    status = session.status_of("test", mark).payload
    assert status["status"] == "error" and status["exit_code"] == 1
    assert status["message"] == (f"interrupted: the agent was killed while `test` ran (pid {leader}); "
                                 "its processes were ended (2 process(es), SIGTERM)")
    assert not _group(leader) and not _alive(child)
    tests = _tests_compartment(session, mark)
    assert tests["message"] == "Tests interrupted (the agent was killed)"
    assert _records(state) == []
    # exactly once: a further restart reports nothing more
    session.agent.stop()
    mark2 = session.dash.mark()
    session.start()
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
    assert not [r for r in session.dash.messages("status", since=mark2) if r.payload.get("command") == "test"]


def test_a_reused_pid_is_not_signalled(session, fleet_repo) -> None:
    state, leader, child = _kill_mid_test(session, fleet_repo)
    os.killpg(leader, signal.SIGKILL)
    wait_for(lambda: not _group(leader), 5, "the old group to be gone")
    # the kernel gives the pid to an unrelated process: same pid and group id, another start time
    other = subprocess.Popen(["sleep", "600"], start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        (path,) = _records(state)
        record = json.loads(path.read_text())
        record.update(pid=other.pid, pgid=other.pid)  # start_time stays the old process's
        path.write_text(json.dumps(record))
        mark = session.dash.mark()
        session.start()
        status = session.status_of("test", mark).payload
        assert status["message"] == (f"interrupted: the agent was killed while `test` ran (pid {other.pid}); its "
                                     "processes had already ended (the pid now belongs to another process, "
                                     "which was left alone)")
        assert other.poll() is None and _alive(other.pid)
        assert session.agent.events("attached_pid_reused")
    finally:
        other.kill()
        other.wait()


def test_after_a_reboot_nothing_is_signalled_and_the_status_says_reboot(session, fleet_repo) -> None:
    state, leader, child = _kill_mid_test(session, fleet_repo)
    try:
        (path,) = _records(state)
        record = json.loads(path.read_text())
        record["boot_id"] = "00000000-0000-4000-8000-000000000000"  # written before "the reboot"
        path.write_text(json.dumps(record))
        mark = session.dash.mark()
        session.start()
        status = session.status_of("test", mark).payload
        assert status["message"] == f"interrupted by reboot: the host restarted while `test` ran (pid {leader})"
        assert _tests_compartment(session, mark)["message"] == "Tests interrupted by reboot"
        assert _alive(leader) and _alive(child)  # whatever has that pid now is not ours
    finally:
        os.killpg(leader, signal.SIGKILL)


def test_a_corrupted_record_is_quarantined_and_the_agent_comes_up(session) -> None:
    session.start()
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    session.agent.stop()
    records = state / "attached"
    records.mkdir(mode=0o700, exist_ok=True)
    (records / "abc.json").write_text('{"id": "abc", "command": "test", "agent_pid": "1", "boot_id": ""}')
    (records / "torn.json").write_text('{"id": "torn", "comm')
    (records / "escape.json").write_text(json.dumps({"id": "../../x", "command": "test", "agent_pid": 5,
                                                      "boot_id": ""}))
    mark = session.dash.mark()
    session.start()
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
    assert sorted(p.name for p in records.iterdir()) == ["abc.bad", "escape.bad", "torn.bad"]
    reasons = [e["error"] for e in session.agent.events("operation_record_quarantined")]
    assert any("agent_pid has the wrong type" in r for r in reasons), reasons
    assert not session.dash.messages("status", since=mark)


def test_a_finished_command_leaves_no_record(session, fleet_repo) -> None:
    add_tests(fleet_repo, {"T01-a.sh": "echo a"})
    session.start()
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    status, _ = session.run("test")
    assert status["status"] == "ok"
    wait_for(lambda: (state / "attached").is_dir() and not _records(state), 5, "the record to be removed")


def test_a_clean_stop_mid_test_is_reported_once_and_not_again_as_interrupted(session, fleet_repo) -> None:
    add_tests(fleet_repo, {"T01-hold.sh": HOLD})
    session.start()
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    mark = session.send("test")
    line = session.dash.wait_message("output", since=mark, where=lambda r: r.payload["line"].startswith("leader="),
                                     timeout=10).payload["line"]
    leader = int(line.split()[0].split("=")[1])
    assert session.agent.stop() == 0  # SIGTERM: the agent ends the group and reports how the test ended
    status = session.status_of("test", mark).payload
    assert status["status"] == "stopped" and status["message"].startswith("stopped by agent shutdown")
    assert not _group(leader) and _records(state) == []
    mark2 = session.dash.mark()
    session.start()
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
    assert not [r for r in session.dash.messages("status", since=mark2) if r.payload.get("command") == "test"]

"""Busy rejection, stop and kill: they end the command, never the agent."""

from __future__ import annotations

import os

from cmd_support import add_tests

HOST = "test-host"


def _long_test(fleet_repo, body: str = "echo started; sleep 30; echo never") -> None:
    add_tests(fleet_repo, {"T01-long.sh": body})


def _started(session, mark: int) -> int:
    """Wait until the long test printed 'started'; return the tracked PID from a heartbeat."""
    session.dash.wait_message("output", since=mark, where=lambda r: r.payload["line"] == "started", timeout=10)
    hb = session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5,
                                   where=lambda r: r.payload.get("command_pid"))
    assert hb.payload["pending_command"] == "test"
    return hb.payload["command_pid"]


def test_busy_rejection_when_two_commands_arrive_together(session, fleet_repo) -> None:
    _long_test(fleet_repo)
    session.start()
    mark = session.dash.mark()
    for name in ("test", "pull", "switch"):  # three frames back to back, same millisecond
        session.dash.send_command(HOST, name)
    pid = _started(session, mark)
    def two_rejections() -> list | None:
        found = session.dash.messages("command_rejected", since=mark)
        return found if len(found) == 2 else None

    rejected = session.dash.wait_for(two_rejections, timeout=5)
    for r in rejected:
        assert r.payload["reason"] == "command already running"
        assert r.payload["current_command"] == "test"
    assert not session.shims.calls("nixos-rebuild")  # the rejected switch never ran
    session.dash.send_command(HOST, "stop")
    session.status_of("test", mark)
    assert session.dash.messages("command_rejected", since=mark)[-1].payload.get("current_pid") in (None, pid)


def test_stop_ends_the_command_not_the_agent(session, fleet_repo) -> None:
    _long_test(fleet_repo)
    session.start()
    agent_pid = session.agent.pid
    mark = session.send("test")
    child = _started(session, mark)
    regs = session.dash.hosts[HOST].registrations
    stop_mark = session.send("stop")
    stop = session.status_of("stop", stop_mark).payload
    assert stop["status"] == "ok" and f"PID {child}" in stop["message"]
    status = session.status_of("test", mark).payload
    assert status["status"] == "stopped" and status["exit_code"] == 128 + 15
    assert "SIGTERM" in status["message"]
    # the agent keeps its PID, its connection and its heartbeats, and accepts the next command
    assert session.agent.running() and session.agent.pid == agent_pid
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5,
                              where=lambda r: r.payload["pending_command"] is None)
    assert session.dash.hosts[HOST].registrations == regs and session.dash.connected(HOST)
    assert not _alive(child)
    status, _ = session.run("refresh-git")
    assert status["status"] == "ok"


def test_stop_escalates_to_sigkill_after_grace(session, fleet_repo) -> None:
    _long_test(fleet_repo, "trap '' TERM; echo started; sleep 30 & wait; sleep 30")
    session.start(NIXFLEET_STOP_GRACE="1")
    mark = session.send("test")
    _started(session, mark)
    session.send("stop")
    status = session.status_of("test", mark, timeout=10).payload
    assert status["status"] == "stopped" and "SIGKILL" in status["message"], status
    assert session.agent.running()


def test_stop_with_nothing_running(session) -> None:
    session.start()
    status, _ = session.run("stop")
    assert status == {"status": "error", "command": "stop", "exit_code": 1, "message": "no command running",
                      **({"generation": status["generation"]} if "generation" in status else {})}


def test_kill_command_alias_bypasses_busy(session, fleet_repo) -> None:
    _long_test(fleet_repo)
    session.start()
    agent_pid = session.agent.pid
    mark = session.send("test")
    child = _started(session, mark)
    session.dash.send_command(HOST, "kill")  # what the dashboard really sends
    status = session.status_of("test", mark).payload
    assert status["status"] == "stopped" and "SIGTERM" in status["message"]
    assert not session.dash.messages("command_rejected", since=mark)
    lines = session.lines(session.dash.messages(since=mark))
    assert f"⚠️ Received kill command: SIGTERM (PID {child})" in lines
    assert session.agent.running() and session.agent.pid == agent_pid


def test_kill_command_message_sigkill_and_foreign_pid(session, fleet_repo) -> None:
    _long_test(fleet_repo)
    session.start()
    mark = session.send("test")
    child = _started(session, mark)
    session.dash.send_kill(HOST, "SIGKILL", 1)  # never PID 1 or anything but the command
    session.dash.wait_message("output", since=mark, where=lambda r: "Refusing to kill PID 1" in r.payload["line"])
    session.dash.send_kill(HOST, "SIGKILL", child)
    status = session.status_of("test", mark).payload
    assert status["status"] == "stopped" and "SIGKILL" in status["message"]
    assert session.agent.running()


def test_kill_with_nothing_running(session) -> None:
    session.start()
    mark = session.dash.mark()
    session.dash.send_kill(HOST)
    rec = session.dash.wait_message("output", since=mark)
    assert rec.payload["line"] == "⚠️ No command running to kill" and rec.payload["is_error"] is True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

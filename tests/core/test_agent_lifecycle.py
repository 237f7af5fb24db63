"""Agent-level behaviour: a broken repository never keeps the host offline; reconnect/exit requests."""

from __future__ import annotations

import shutil
import threading

from inproc import Session
from support import make_fleet_repo, wait_for


def test_unreachable_repo_is_reported_and_retried_while_connected(dashboard, start_agent, tmp_path):
    origin = tmp_path / "later"
    agent = start_agent(NIXFLEET_REPO_URL=str(origin))
    beat = dashboard.wait_message("heartbeat", timeout=10)  # connected despite the failed clone
    git_status = beat.payload["update_status"]["git"]
    assert git_status["status"] == "error" and git_status["message"].startswith("Repository unavailable")
    assert beat.payload["generation"] == ""
    assert agent.running()
    make_fleet_repo(tmp_path / "staging")
    shutil.move(tmp_path / "staging", origin)  # the remote becomes reachable
    healed = dashboard.wait_message("heartbeat", where=lambda r: r.payload["generation"] != "", timeout=20)
    assert healed.payload["update_status"]["git"]["status"] != "error"
    assert {r.conn for r in dashboard.messages()} == {1}  # never disconnected for it


def test_request_reconnect_closes_normally_and_registers_again(dashboard, tmp_path):
    with Session(dashboard.url, tmp_path) as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        session.reporter.status("switch", "ok", 0)
        session.reporter.request_reconnect()
        second = dashboard.wait_message("register", where=lambda r: r.conn == 2, timeout=5)
        status = dashboard.messages("status")[0]
        assert status.conn == 1 and status.index < second.index  # delivered before the reconnect
        dashboard.wait_for(lambda: any(c[0] == 1 for c in dashboard.closes), timeout=3)
        assert [c for c in dashboard.closes if c[0] == 1][0][1] == 1000
        wait_for(lambda: session.registrations == 2, 3, "second registration")


def test_request_exit_flushes_queue_before_exiting(dashboard, tmp_path):
    with Session(dashboard.url, tmp_path) as session:
        exited = threading.Event()
        codes: list[int] = []
        session.reporter.bind(heartbeat_now=lambda: None, reconnect=session.connection.reconnect,
                              exit=lambda code: (codes.append(code), exited.set()))
        wait_for(lambda: session.connection.registered, 10, "registration")
        for i in range(500):
            session.reporter.output("switch", f"activation line {i}")
        session.reporter.status("switch", "ok", 0)
        session.reporter.request_exit(101)
        assert codes == [101]
        # by the time the agent is told to exit, everything was handed to the socket
        dashboard.wait_message("status", timeout=3)
        assert len(dashboard.messages("output")) == 500

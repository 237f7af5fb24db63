"""Whatever the link does, nothing is lost and the agent never wedges (issue 12).

Each test breaks the link in one way - a dashboard that stops reading, a half-open link that
swallows what the agent writes, an RST, a SIGKILLed agent - and checks what the dashboard ends up
with. Delivery is at least once: a status may arrive twice after a fault (the dashboard ignores the
repeat, see docs/delivery.md), never zero times and never out of order.
"""

from __future__ import annotations

import threading

import pytest
from faultproxy import FaultProxy
from inproc import Session
from support import TEST_HOST, wait_for

from nixfleet_agent.link import protocol


@pytest.fixture
def proxy(dashboard):
    with FaultProxy(dashboard.port) as fault_proxy:
        yield fault_proxy


def statuses(dashboard, command=None):
    return [r for r in dashboard.messages("status") if command is None or r.payload["command"] == command]


def test_reader_never_blocks_on_a_full_outbox(dashboard, tmp_path):
    """A chatty command fills the outbox, the dashboard stops reading, then a command arrives: the
    connection thread answers it (command_rejected) without waiting for room, notices the dead link
    at the ping deadline and registers again. Before: it blocked in Outbox.put for good."""

    def reject(session, message):
        if isinstance(message, protocol.Command):
            session.reporter.rejected("chatty", 4242)

    with Session(dashboard.url, tmp_path, outbox_max=50, on_message=reject) as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        dashboard.freeze("inproc")
        producer_done = threading.Event()

        def chatty():
            for i in range(2000):
                if session.stop.is_set():
                    break
                session.reporter.output("chatty", f"{i:05d} " + "x" * 16000)
            producer_done.set()

        threading.Thread(target=chatty, daemon=True).start()
        wait_for(lambda: len(session.outbox) >= 50, 20, "the outbox to fill while the dashboard is frozen")
        dashboard.send_command("inproc", "pull")
        wait_for(lambda: session.received, 10, "the command to be read")
        # the dead link is found and a new session registers, where the rejection is delivered
        dashboard.wait_message("command_rejected", timeout=20)
        assert dashboard.hosts["inproc"].registrations >= 2
        session.stop.set()


def test_exception_in_registered_callback_costs_no_link(dashboard, tmp_path):
    """Before: the exception ended the connection thread; the process lived on, offline for good."""

    def explode(session):
        if session.registrations == 1:
            raise RuntimeError("bug in a callback")

    with Session(dashboard.url, tmp_path, on_registered=explode) as session:
        wait_for(lambda: session.registrations >= 1, 10, "registration")
        session.reporter.status("after", "ok", 0)
        dashboard.wait_message("status", where=lambda r: r.payload["command"] == "after", timeout=10)


def test_status_swallowed_by_a_half_open_link_is_sent_again(dashboard, proxy, tmp_path):
    """A status that only reached the kernel's send buffer of a half-open link is not delivered:
    without a pong confirming it, the agent resends it on the next link. Before: counted as sent."""
    with Session(proxy.url, tmp_path) as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        link = proxy.wait_link(1)
        link.blackhole("up")  # the agent's bytes vanish; the dashboard still talks to the agent
        session.reporter.output("lost", "a line that only reaches the void")
        session.reporter.status("lost", "ok", 0)
        record = dashboard.wait_message("status", where=lambda r: r.payload["command"] == "lost", timeout=20)
        assert record.conn >= 2
        assert [r.payload["line"] for r in dashboard.messages("output")] == ["a line that only reaches the void"]


def test_rst_mid_stream_loses_no_status_and_keeps_order(dashboard, proxy, tmp_path):
    with Session(proxy.url, tmp_path) as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        for i in range(300):
            session.reporter.output("burst", f"line {i}")
            if i % 50 == 49:
                session.reporter.status(f"step{i // 50}", "ok", 0)
            if i == 120:
                proxy.wait_link(1).rst()
        dashboard.wait_message("status", where=lambda r: r.payload["command"] == "step5", timeout=20)
        firsts = []
        for record in statuses(dashboard):
            if record.payload["command"] not in firsts:
                firsts.append(record.payload["command"])
        assert firsts == [f"step{i}" for i in range(6)]
        lines = [r.payload["line"] for r in dashboard.messages("output")]
        assert sorted(set(lines), key=lambda line: int(line.split()[1])) == [f"line {i}" for i in range(300)]


def test_status_in_flight_when_the_agent_is_killed_is_sent_by_the_next_agent(dashboard, proxy, start_agent,
                                                                               agent_env, tmp_path):
    """The final status is journaled on disk until the dashboard confirmed it: a SIGKILL while it
    is only in flight does not lose it. Before: it was popped once written and gone with the process."""
    agent = start_agent(agent_env(NIXFLEET_URL=proxy.url))
    dashboard.wait_message("heartbeat", timeout=15)
    proxy.wait_link(1).blackhole("up")
    dashboard.send_command(TEST_HOST, "refresh-git")
    agent.wait_event("command_finished", timeout=15)
    agent.kill()
    assert not statuses(dashboard, "refresh-git"), statuses(dashboard, "refresh-git")[0]
    journal = tmp_path / "state" / "undelivered"
    start_agent(agent_env())  # straight to the dashboard this time
    dashboard.wait_message("status", where=lambda r: r.payload["command"] == "refresh-git", timeout=15)
    wait_for(lambda: not list(journal.glob("*.json")), 10, "the journal entry to be removed once confirmed")


def test_closing_does_not_wait_for_a_writer_stuck_on_a_dashboard_that_stopped_reading(dashboard, tmp_path):
    """The writer is blocked in sendall (holding the send lock) on a dashboard that stopped reading.
    Closing the session - shutdown or the post-switch reconnect - must not wait for that lock; before,
    websocket-client's send_close waited for it until ping_timeout (here 120 s) ended the writer."""
    with Session(dashboard.url, tmp_path, NIXFLEET_PING_TIMEOUT="120", NIXFLEET_PING_INTERVAL="60") as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        dashboard.freeze("inproc")

        def chatty():
            for i in range(4000):
                if session.stop.is_set():
                    break
                session.reporter.output("chatty", f"{i:05d} " + "x" * 16000)

        threading.Thread(target=chatty, daemon=True).start()
        writer = session.connection._session.ws.lock  # websocket-client's send lock, held while writing

        def stuck() -> bool:  # the lock held and nothing leaving the queue for half a second
            before = len(session.outbox)
            if before < 200 or not writer.locked():
                return False
            session.stop.wait(0.5)
            return writer.locked() and len(session.outbox) >= before

        wait_for(stuck, 30, "the writer to block on the frozen dashboard")
        closed = threading.Event()
        threading.Thread(target=lambda: (session.connection.reconnect(), closed.set()), daemon=True).start()
        assert closed.wait(20), "closing the session waited for the stuck writer"
        session.stop.set()

"""Nothing a command reports is lost to a reconnect: output and the final status arrive, in order."""

from __future__ import annotations

import os
import stat
import time

from inproc import Session
from support import git, wait_for


def output_lines(dashboard, command: str) -> list[str]:
    return [r.payload["line"] for r in dashboard.messages("output") if r.payload.get("command") == command]


def test_reporter_output_and_status_survive_dashboard_outage(dashboard, tmp_path):
    with Session(dashboard.url, tmp_path) as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        for i in range(50):
            session.reporter.output("test", f"line {i}")
        dashboard.wait_message("output", where=lambda r: r.payload["line"] == "line 49", timeout=5)
        # delivered = the pong to a ping sent after them (docs/delivery.md); without that evidence they
        # would rightly be sent again after the reconnect
        wait_for(lambda: len(session.outbox) == 0, 5, "delivery evidence for the first 50 lines")
        dashboard.stop()  # the dashboard goes away in the middle of the command's output
        wait_for(lambda: not session.connection.registered, 5, "disconnect noticed")
        for i in range(50, 150):
            session.reporter.output("test", f"line {i}", "stderr" if i % 10 == 0 else "stdout")
        session.reporter.status("test", "ok", 0)
        session.reporter.progress("tests", 8, 8, "complete")
        assert len(session.outbox) == 102
        dashboard.start()
        status = dashboard.wait_message("status", timeout=10)
        dashboard.wait_message("operation_progress", since=status.index, timeout=5)
        assert output_lines(dashboard, "test") == [f"line {i}" for i in range(150)]
        outputs = dashboard.messages("output")
        assert status.index > outputs[-1].index and status.conn == outputs[-1].conn == 2
        assert status.payload == {"status": "ok", "command": "test", "exit_code": 0, "generation": "abc1234"}
        assert [r.payload["is_error"] for r in outputs[50:60]] == [True] + [False] * 9
        assert len(dashboard.messages("status")) == 1


def test_overflow_while_disconnected_drops_oldest_output_and_says_so(dashboard, tmp_path):
    with Session(dashboard.url, tmp_path, outbox_max=100) as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        dashboard.stop()
        wait_for(lambda: not session.connection.registered, 5, "disconnect noticed")
        session.reporter.status("first", "ok", 0)
        for i in range(300):
            session.reporter.output("big", f"line {i}")
        session.reporter.status("big", "error", 1, "command failed")
        dashboard.start()
        dashboard.wait_message("status", where=lambda r: r.payload["command"] == "big", timeout=10)
        statuses = [r.payload["command"] for r in dashboard.messages("status")]
        assert statuses == ["first", "big"]  # statuses are never dropped
        lines = output_lines(dashboard, "big")
        notice = [line for line in lines if "dropped" in line]
        assert len(notice) == 1
        dropped = int(notice[0].split("[nixfleet-agent: ")[1].split()[0])
        kept = [line for line in lines if "dropped" not in line]
        assert dropped + len(kept) == 300
        assert kept == [f"line {i}" for i in range(dropped, 300)]  # the newest lines, in order
        assert lines[0] == notice[0]  # the notice sits where the gap is


def test_long_lines_are_cut_so_no_frame_exceeds_256_kib(dashboard, tmp_path):
    with Session(dashboard.url, tmp_path) as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        session.reporter.output("big", "x" * 1_000_000)
        session.reporter.output("big", "é" * 300_000)
        session.reporter.status("big", "error", 1, "m" * 1_000_000)
        dashboard.wait_message("status", timeout=10)
        records = dashboard.messages("output") + dashboard.messages("status")
        assert all(r.size <= 256 * 1024 for r in records)
        first, second = (r.payload["line"] for r in dashboard.messages("output"))
        assert first.startswith("x" * 1000) and first.endswith("bytes]") and "truncated" in first
        assert second.startswith("é" * 100) and "truncated" in second
        assert session.connection.registered  # the dashboard (512 KiB limit) kept the connection


def test_command_output_across_a_disconnect_arrives_complete(dashboard, fleet_repo, start_agent, tmp_path):
    """End to end: a real `test` command pauses mid-output while the dashboard is down."""
    gate = tmp_path / "gate"
    script = fleet_repo / "hosts" / "test-host" / "tests" / "T01-long.sh"
    script.write_text(
        "#!/bin/sh\n"
        "i=1; while [ $i -le 20 ]; do echo \"before $i\"; i=$((i+1)); done\n"
        f"while [ ! -e '{gate}' ]; do sleep 0.05; done\n"
        "i=1; while [ $i -le 40 ]; do echo \"after $i\"; i=$((i+1)); done\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    git(fleet_repo, "add", "-A")
    git(fleet_repo, "commit", "-q", "-m", "long test")
    agent = start_agent()
    dashboard.wait_message("heartbeat", timeout=10)
    dashboard.send_command("test-host", "test")
    dashboard.wait_message("output", where=lambda r: r.payload["line"] == "before 20", timeout=10)
    dashboard.stop()
    agent.wait_event("disconnected", timeout=5)
    gate.touch()
    time.sleep(0.5)  # let the script finish while nobody listens (not a timing assertion)
    dashboard.start()
    status = dashboard.wait_message("status", where=lambda r: r.payload["command"] == "test", timeout=15)
    lines = [line for line in output_lines(dashboard, "test") if line.startswith(("before", "after"))]
    assert lines == [f"before {i}" for i in range(1, 21)] + [f"after {i}" for i in range(1, 41)]
    assert status.payload["exit_code"] == 0
    last_output = [r for r in dashboard.messages("output") if r.payload["command"] == "test"][-1]
    assert status.index > last_output.index
    assert agent.running() and os.path.exists(agent.log_path)


def test_full_outbox_blocks_the_producer_while_connected_and_loses_nothing(dashboard, tmp_path):
    """A dashboard that reads slowly back-pressures the command instead of costing lines or memory."""
    import threading

    lines, size = 3000, 8 * 1024  # 24 MiB: more than the kernel's socket buffers can absorb
    with Session(dashboard.url, tmp_path, outbox_max=100,
                 NIXFLEET_PING_INTERVAL="30", NIXFLEET_PING_TIMEOUT="60") as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        dashboard.freeze("inproc")
        produced = []

        def produce() -> None:
            for i in range(lines):
                session.reporter.output("flood", f"{i:06d} " + "z" * size)
                produced.append(i)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        wait_for(lambda: len(session.outbox) >= 99, 20, "outbox to fill up")
        assert producer.is_alive() and len(produced) < lines  # blocked, not buffering without bound
        assert session.outbox.dropped_total == 0
        dashboard.thaw("inproc")
        producer.join(60)
        assert not producer.is_alive()
        dashboard.wait_for(lambda: len(dashboard.messages("output")) == lines, timeout=60)
        got = [int(r.payload["line"][:6]) for r in dashboard.messages("output")]
        assert got == list(range(lines)) and session.outbox.dropped_total == 0

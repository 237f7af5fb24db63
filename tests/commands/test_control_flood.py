"""A flood of kill requests costs one control thread, not a thread (and a timer) each (issue 12)."""

from __future__ import annotations

import threading
from pathlib import Path

from cmd_support import add_tests

HOST = "test-host"


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def test_5000_kills_start_no_thread_each_and_still_escalate(session, fleet_repo) -> None:
    """Before: 5,000 threads, and a SIGKILL timer thread per SIGTERM that found the child alive."""
    add_tests(fleet_repo, {"T01-stubborn.sh": "trap '' TERM; echo started; sleep 30 & wait; sleep 30"})
    session.start()
    mark = session.send("test")
    session.dash.wait_message("output", since=mark, where=lambda r: r.payload["line"] == "started", timeout=10)
    pid = session.agent.pid
    baseline = threads_of(pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], threads_of(pid))
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(5000):
            session.dash.send_kill(HOST, "SIGTERM", 0)
        status = session.status_of("test", mark, timeout=30).payload
    finally:
        done.set()
        sampler.join(5)
    assert status["status"] == "stopped" and "SIGKILL" in status["message"], status  # escalation still fired
    assert peak[0] <= baseline + 3, f"threads went from {baseline} to {peak[0]}"
    assert session.agent.running()

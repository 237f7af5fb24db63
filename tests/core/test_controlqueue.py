"""The one control worker: coalescing, bounded queue, and SIGKILL countdowns where the earlier
deadline wins (a `stop` with a long grace must not delay a later `kill_command`)."""

from __future__ import annotations

import threading

from nixfleet_agent.controlqueue import MAX_PENDING, ControlQueue


def test_a_shorter_countdown_replaces_a_longer_one_for_the_same_key() -> None:
    queue = ControlQueue()
    fired: list[str] = []
    done = threading.Event()

    def long() -> None:
        fired.append("long")

    def short() -> None:
        fired.append("short")
        done.set()

    assert queue.after(600.0, ("escalate", 1), long)
    assert queue.after(0.05, ("escalate", 1), short)
    assert done.wait(10.0), "the earlier deadline never fired"
    assert fired == ["short"]
    assert queue.pending() == 0  # the long one is gone, not merely later


def test_a_later_countdown_for_the_same_key_is_coalesced() -> None:
    queue = ControlQueue()
    done = threading.Event()
    assert queue.after(0.05, "k", done.set)
    assert not queue.after(600.0, "k", lambda: None)
    assert queue.coalesced == 1
    assert done.wait(10.0)
    assert queue.pending() == 0


def test_pending_requests_with_one_key_are_one_request_and_the_queue_is_bounded() -> None:
    queue = ControlQueue()
    gate = threading.Event()
    ran: list[int] = []
    assert queue.submit("block", lambda: gate.wait(10.0))
    accepted = sum(queue.submit(("kill", i % 3), lambda i=i: ran.append(i)) for i in range(100))
    assert accepted == 3 and queue.coalesced == 97
    accepted = sum(queue.submit(("other", i), lambda: None) for i in range(2 * MAX_PENDING))
    assert queue.refused > 0 and accepted <= MAX_PENDING
    gate.set()

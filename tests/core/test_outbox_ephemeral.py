"""A heartbeat never waits for room in a full outbox (the ticker owns no queue and must keep its
schedule, and touch the watchdog's alive file), and only the newest queued heartbeat is kept."""

from __future__ import annotations

import threading

from nixfleet_agent.link.outbox import Message, Outbox


def test_a_heartbeat_does_not_wait_in_a_full_live_outbox_and_replaces_the_queued_one() -> None:
    box = Outbox(max_messages=3)
    box.set_live(True)
    for i in range(3):
        assert box.put(Message("output", f"line {i}", True, "test"))
    stop = threading.Event()
    returned = threading.Event()

    def ticker() -> None:
        box.put(Message("heartbeat", "hb-1", durable=False), stop)
        box.put(Message("heartbeat", "hb-2", durable=False), stop)
        returned.set()

    threading.Thread(target=ticker, daemon=True).start()
    try:
        assert returned.wait(10.0), "the heartbeat waited for room in the outbox"
    finally:
        stop.set()
    taken = box.take(100, 1 << 20)
    assert [m.text for m in taken] == ["line 0", "line 1", "line 2", "hb-2"]


def test_a_durable_message_still_waits_for_room_while_live() -> None:
    box = Outbox(max_messages=1)
    box.set_live(True)
    assert box.put(Message("output", "first", True, "test"))
    stop = threading.Event()
    returned = threading.Event()
    threading.Thread(target=lambda: (box.put(Message("status", "s", True, "test"), stop), returned.set()),
                     daemon=True).start()
    assert not returned.wait(1.5)  # back-pressure: no room, link live
    stop.set()
    assert returned.wait(10.0)

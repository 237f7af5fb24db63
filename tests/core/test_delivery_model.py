"""The Outbox against a model of the link: whatever sequence of sends, link drops, overflows,
writer failures and agent crashes happens, no status is lost or reordered.

The machine plays writer and dashboard: ``write`` takes a batch and puts its frames "on the wire";
``dashboard_reads`` moves the wire into what the dashboard has seen and answers the evidence ping
(``delivered``); ``link_drops`` loses the wire and ends the session; ``crash`` loses the wire and
the process (a new Outbox is built from the on-disk journal). At the end the link heals and
everything is flushed: the dashboard must have every status, first occurrences in the order they
were queued (a repeat after a fault is allowed: delivery is at least once), and every output line
it saw in order, with each missing line accounted for by a gap notice (or a crash).
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from nixfleet_agent.link import protocol
from nixfleet_agent.link.journal import Journal
from nixfleet_agent.link.outbox import Message, Outbox

LIMIT = 12


class DeliveryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.state_dir = Path(self.tmp.name)
        self.box = self._new_box()
        self.counter = 0
        self.statuses_put: list[str] = []
        self.lines_put: list[str] = []
        self.wire: list[str] = []  # frames written on the current link, not yet read
        self.seen: list[str] = []  # frames the dashboard read, in order
        self.written_upto = 0
        self.crashes = 0

    def _new_box(self) -> Outbox:
        box = Outbox(LIMIT, journal=Journal(self.state_dir))
        box.never_block(threading.current_thread())  # one thread plays everyone: overflow, never wait
        box.set_live(True)
        return box

    def teardown(self) -> None:
        self.tmp.cleanup()

    # -- producers -------------------------------------------------------------------------------
    @rule()
    def put_status(self) -> None:
        self.counter += 1
        name = f"s{self.counter}"
        self.statuses_put.append(name)
        text = protocol.encode("status", protocol.status(name, "ok", 0))
        self.box.put(Message("status", text, True, name, journaled=True))

    @rule(n=st.integers(1, 6))
    def put_output(self, n: int) -> None:
        for _ in range(n):
            self.counter += 1
            line = f"l{self.counter}"
            self.lines_put.append(line)
            self.box.put(Message("output", protocol.encode("output", protocol.output("c", line)), True, "c"))

    # -- writer and link -------------------------------------------------------------------------
    @rule(count=st.integers(1, 5))
    def write(self, count: int) -> None:
        batch = self.box.take(count, 10_000)
        if batch:
            self.wire += [self.box.wire_text(m) for m in batch]
            self.written_upto = self.box.written(batch)

    @rule(count=st.integers(1, 5))
    def write_fails(self, count: int) -> None:
        batch = self.box.take(count, 10_000)
        if batch:
            self.box.unwritten(batch)

    @rule()
    def dashboard_reads(self) -> None:
        self.seen += self.wire
        self.wire = []
        self.box.delivered(self.written_upto)

    @rule()
    def dashboard_reads_without_pong(self) -> None:
        self.seen += self.wire
        self.wire = []

    @rule()
    def link_drops(self) -> None:
        self.wire = []
        self.box.set_live(False)
        self.box.set_live(True)
        self.written_upto = 0

    @rule()
    def crash(self) -> None:
        self.wire = []
        self.crashes += 1
        self.box = self._new_box()
        self.written_upto = 0

    @invariant()
    def statuses_never_out_of_order(self) -> None:
        firsts = _first_occurrences(_statuses(self.seen))
        assert firsts == [s for s in self.statuses_put if s in firsts]
        assert firsts == self.statuses_put[: len(firsts)]

    def final_flush(self) -> None:
        self.dashboard_reads()
        self.link_drops()
        for _ in range(10_000):
            batch = self.box.take(64, 1 << 20)
            if not batch:
                break
            self.wire += [self.box.wire_text(m) for m in batch]
            self.written_upto = self.box.written(batch)
            self.dashboard_reads()
        assert len(self.box) == 0
        assert _first_occurrences(_statuses(self.seen)) == self.statuses_put
        assert not list((self.state_dir / "undelivered").glob("*.json"))
        lines, announced = _lines(self.seen)
        firsts = _first_occurrences(lines)
        assert firsts == [line for line in self.lines_put if line in firsts]  # order kept
        if not self.crashes:  # a crash loses queued output (never a status); otherwise all is counted
            assert len(firsts) + announced >= len(self.lines_put)


def _statuses(frames: list[str]) -> list[str]:
    out = []
    for frame in frames:
        message = json.loads(frame)
        if message["type"] == "status":
            out.append(message["payload"]["command"])
    return out


def _lines(frames: list[str]) -> tuple[list[str], int]:
    lines, announced = [], 0
    for frame in frames:
        message = json.loads(frame)
        if message["type"] == "output":
            line = message["payload"]["line"]
            if line.startswith("[nixfleet-agent: "):
                announced += int(line.split()[1])
            else:
                lines.append(line)
    return lines, announced


def _first_occurrences(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


class FlushingMachine(DeliveryMachine):
    def teardown(self) -> None:
        try:
            self.final_flush()
        finally:
            super().teardown()


FlushingMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_no_status_lost_or_reordered = FlushingMachine.TestCase

"""Bounded, ordered queue between every sender and the socket writer, with evidence of delivery.

Every message gets a sequence number when queued. It then moves through three states:

* **queued** - waiting for a registered session;
* **in flight** - fully written to the socket of the current session, but not yet known to be read;
* **delivered** - the dashboard answered a ping that the writer sent *after* the message. TCP and
  WebSocket keep order and the dashboard reads frames one after the other, so a pong carrying
  ``nf:<seq>`` proves every frame up to ``seq`` was read. Only then is a message forgotten (and its
  journal file removed).

When a session ends, what is in flight goes back to the head of the queue, in sequence order, and
is sent again after the next ``registered``: durable messages are delivered at least once, never
lost and never reordered. A status that only reached the kernel's send buffer of a half-open link
therefore counts as undelivered. Ephemeral messages (heartbeats) are only accepted while registered
and are discarded when a session ends: a stale heartbeat is worse than none.

Bounds: when the queue is full the oldest *output lines* are dropped (never a status) and a gap
notice stands in for them at the point of the gap. While registered a full queue blocks a producer
(back-pressure on a chatty child) - except a thread registered with ``never_block`` (the thread
that reads the socket), which must never wait on a producer queue: its messages are small and are
queued over the bound instead.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from . import protocol
from .journal import Journal

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
EVIDENCE_PREFIX = b"nf:"


@dataclass(eq=False)
class Message:
    kind: str
    text: str
    durable: bool = True
    command: str = ""
    dropped: int = 0  # for an "output-gap" marker: how many output lines it stands for
    journaled: bool = False  # kept on disk until delivered (final statuses)
    seq: int = 0  # assigned by Outbox.put
    sent_at: float = 0.0  # monotonic time the writer finished writing it (in flight)

    @property
    def droppable(self) -> bool:
        return self.kind == "output"


def evidence_payload(seq: int) -> bytes:
    """Ping payload that asks the dashboard to confirm everything up to ``seq`` (<= 125 bytes)."""
    return EVIDENCE_PREFIX + str(seq).encode()


def parse_evidence(payload: bytes) -> int | None:
    if not payload.startswith(EVIDENCE_PREFIX):
        return None
    digits = payload[len(EVIDENCE_PREFIX):]
    return int(digits) if digits.isdigit() and len(digits) < 20 else None


class Outbox:
    def __init__(self, max_messages: int = 10000, max_bytes: int = DEFAULT_MAX_BYTES,
                 journal: Journal | None = None) -> None:
        self._items: deque[Message] = deque()  # queued, sorted by seq
        self._sending: list[Message] = []  # taken by the writer, being written
        self._inflight: deque[Message] = deque()  # written on this session, no evidence yet
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._live = False
        self._kicked = False
        self._closed = False
        self._never_block: set[threading.Thread] = set()
        self._journal = journal
        self._seq = 0
        self.dropped_total = 0
        self.written_seq = 0  # highest seq written on the current session
        if journal is not None:
            for seq, kind, text, command in journal.load():
                self._items.append(Message(kind, text, True, command, journaled=True, seq=seq))
                self._bytes += len(text)
                self._seq = max(self._seq, seq)

    # -- producer side -------------------------------------------------------------------------
    def never_block(self, thread: threading.Thread) -> None:
        """``thread`` (the socket reader) queues over the bound instead of waiting for room."""
        with self._cond:
            self._never_block.add(thread)

    def put(self, message: Message, stop: threading.Event | None = None) -> bool:
        """Queue a message; False if it was an ephemeral one refused while not registered."""
        # back-pressure is for producers of durable messages; an ephemeral one (a heartbeat) never
        # waits - the ticker must keep its schedule - and replaces the copy still queued instead
        may_block = message.durable and threading.current_thread() not in self._never_block
        with self._cond:
            if not message.durable and not self._live:
                return False
            if not message.durable:
                self._drop_queued(message.kind)
            while (may_block and self._full(message) and self._live and not self._closed
                   and not (stop and stop.is_set())):
                self._cond.wait(1.0)  # woken on every delivery; the timeout re-checks stop
            # room is made by dropping output only for durable messages; a heartbeat may exceed the
            # bound by its one queued copy rather than cost command output
            while message.durable and self._full(message) and self._drop_one_output():
                pass
            self._seq += 1
            message.seq = self._seq
            if message.journaled and self._journal is not None:
                self._journal.add(message.seq, message.kind, message.text, message.command)
            self._items.append(message)
            self._bytes += len(message.text)
            self._cond.notify_all()
            return True

    def _count(self) -> int:
        return len(self._items) + len(self._sending) + len(self._inflight)

    def _full(self, incoming: Message) -> bool:
        return self._count() > 0 and (
            self._count() + 1 > self._max_messages or self._bytes + len(incoming.text) > self._max_bytes
        )

    def _drop_queued(self, kind: str) -> None:
        """Forget a not yet taken ephemeral message of ``kind``: only the newest heartbeat matters."""
        for index, item in enumerate(self._items):
            if item.kind == kind and not item.durable:
                del self._items[index]
                self._bytes -= len(item.text)
                return

    def _drop_one_output(self) -> bool:
        for index, item in enumerate(self._items):
            if item.droppable:
                del self._items[index]
                self._bytes -= len(item.text)
                self.dropped_total += 1
                self._note_gap(index, item)
                return True
        return False

    def _note_gap(self, index: int, line: Message) -> None:
        """Keep one notice per gap, just before the first surviving line, counting what it replaces;
        it takes the dropped line's seq, so the queue stays sorted."""
        if index > 0 and self._items[index - 1].kind == "output-gap":
            gap = self._items[index - 1]
            gap.dropped += 1
            gap.command = line.command
            return
        self._items.insert(index, Message("output-gap", "", True, line.command, dropped=1, seq=line.seq))

    # -- session side --------------------------------------------------------------------------
    def set_live(self, live: bool) -> None:
        """Live = registered on a connection. Leaving live ends the session: what is in flight goes
        back to the queue (durable only, in seq order) for the next session."""
        with self._cond:
            self._live = live
            if not live:
                self._requeue(list(self._inflight) + self._sending)
                self._inflight.clear()
                self._sending = []
                self.written_seq = 0
                kept = deque(m for m in self._items if m.durable)
                self._bytes = sum(len(m.text) for m in kept)
                self._items = kept
            self._cond.notify_all()

    def _requeue(self, messages: Iterable[Message]) -> None:
        back = [m for m in messages if m.durable]
        if back:
            self._items = deque(sorted([*back, *self._items], key=lambda m: m.seq))

    def kick(self) -> None:
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Block until a deliverable message exists, a kick, or the timeout."""
        with self._cond:
            if not self._kicked and not (self._live and self._items):
                self._cond.wait(timeout)
            self._kicked = False

    def take(self, max_count: int, max_bytes: int) -> list[Message]:
        """Move the head of the queue (up to ``max_count`` messages and about ``max_bytes``, always
        at least one) to the writer. Nothing taken can be dropped by overflow while it is written;
        the writer reports back with ``written`` or, on failure, ``unwritten``."""
        with self._cond:
            if not self._live or self._sending:
                return []
            batch: list[Message] = []
            size = 0
            while self._items and len(batch) < max_count:
                head = self._items[0]
                if batch and size + len(head.text) > max_bytes:
                    break
                batch.append(self._items.popleft())
                size += len(head.text)
            self._sending = batch
            return list(batch)

    def wire_text(self, message: Message) -> str:
        if message.kind != "output-gap":
            return message.text
        notice = f"[nixfleet-agent: {message.dropped} output line(s) dropped while disconnected (outbox full)]"
        return protocol.encode("output", protocol.output(message.command, notice, "stderr"))

    def written(self, batch: list[Message]) -> int:
        """The batch is fully on the socket: in flight until evidence. Returns the highest seq."""
        now = time.monotonic()
        with self._cond:
            if self._sending is not batch and self._sending != batch:
                return self.written_seq  # the session ended meanwhile; set_live requeued them
            for message in batch:
                message.sent_at = now
                self._inflight.append(message)
            self._sending = []
            if batch:
                self.written_seq = max(self.written_seq, batch[-1].seq)
            return self.written_seq

    def unwritten(self, batch: list[Message]) -> None:
        """Writing failed: the batch goes back to the head, unchanged (set_live may already have)."""
        with self._cond:
            if self._sending and self._sending == batch:
                self._requeue(batch)
                self._sending = []
                self._bytes = sum(len(m.text) for m in self._items) + sum(len(m.text) for m in self._inflight)

    def delivered(self, upto: int) -> int:
        """Evidence arrived that every frame up to ``upto`` was read: forget them. Returns how many."""
        done = 0
        with self._cond:
            while self._inflight and self._inflight[0].seq <= upto:
                message = self._inflight.popleft()
                self._bytes -= len(message.text)
                if message.journaled and self._journal is not None:
                    self._journal.remove(message.seq)
                done += 1
            if done:
                self._cond.notify_all()
        return done

    def unconfirmed_since(self) -> float | None:
        """When the oldest message still lacking evidence was written (monotonic), or None."""
        with self._cond:
            return self._inflight[0].sent_at if self._inflight else None

    def inflight(self) -> int:
        with self._cond:
            return len(self._inflight)

    def __len__(self) -> int:
        """Messages not yet delivered (queued, being written or in flight)."""
        with self._cond:
            return self._count()

    def drain(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait until everything queued so far has been delivered (evidence, not just written), e.g.
        before exit after a switch; True if so. ``stop`` ends the wait early (re-checked every second)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._seq
            while self._pending_upto(target):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._cond.wait(remaining if stop is None else min(remaining, 1.0))
            return True

    def _pending_upto(self, target: int) -> bool:
        for group in (self._inflight, self._sending, self._items):
            if group and group[0].seq <= target:
                return True
        return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

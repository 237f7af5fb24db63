"""Bounded, ordered queue between every sender and the single socket writer.

Durable messages (output, status, progress, rejections) survive disconnects and are replayed in order
after the next registration, so a command's final ``status`` is never lost. Ephemeral messages
(heartbeats) are only accepted while registered and are discarded on disconnect: a stale heartbeat is
worse than none. When the bound is hit the oldest *output lines* are dropped (never a status) and the
count is announced in-band as an output line at the point of the gap. While the session is live a
full queue blocks the producer instead, which back-pressures a chatty child process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from . import protocol

DEFAULT_MAX_BYTES = 16 * 1024 * 1024


@dataclass
class Message:
    kind: str
    text: str
    durable: bool = True
    command: str = ""
    dropped: int = 0  # for an "output-gap" marker: how many output lines it stands for

    @property
    def droppable(self) -> bool:
        return self.kind == "output"


class Outbox:
    def __init__(self, max_messages: int = 10000, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._items: deque[Message] = deque()
        self._bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._live = False
        self._kicked = False
        self._closed = False
        self.dropped_total = 0

    # -- producer side -------------------------------------------------------------------------
    def put(self, message: Message, stop: threading.Event | None = None) -> bool:
        """Queue a message; False if it was an ephemeral one refused while not registered."""
        with self._cond:
            if not message.durable and not self._live:
                return False
            while self._full(message) and self._live and not self._closed and not (stop and stop.is_set()):
                self._cond.wait(1.0)  # woken by the writer on every send; the timeout re-checks stop
            while self._full(message) and self._drop_one_output():
                pass
            self._items.append(message)
            self._bytes += len(message.text)
            self._cond.notify_all()
            return True

    def _full(self, incoming: Message) -> bool:
        return bool(self._items) and (
            len(self._items) + 1 > self._max_messages or self._bytes + len(incoming.text) > self._max_bytes
        )

    def _drop_one_output(self) -> bool:
        for index, item in enumerate(self._items):
            if item.droppable:
                del self._items[index]
                self._bytes -= len(item.text)
                self.dropped_total += 1
                self._note_gap(index, item.command)
                return True
        return False

    def _note_gap(self, index: int, command: str) -> None:
        """Keep one notice per gap, just before the first surviving line, counting what it replaces."""
        if index > 0 and self._items[index - 1].kind == "output-gap":
            gap = self._items[index - 1]
            gap.dropped += 1
            gap.command = command
            return
        self._items.insert(index, Message("output-gap", "", True, command, dropped=1))

    # -- writer side ---------------------------------------------------------------------------
    def set_live(self, live: bool) -> None:
        """Live = registered on a connection; leaving live drops queued ephemeral messages."""
        with self._cond:
            self._live = live
            if not live:
                kept = deque(m for m in self._items if m.durable)
                self._bytes = sum(len(m.text) for m in kept)
                self._items = kept
            self._cond.notify_all()

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

    def peek(self) -> Message | None:
        batch = self.peek_many(1, 0)
        return batch[0] if batch else None

    def peek_many(self, max_count: int, max_bytes: int) -> list[Message]:
        """The head of the queue, up to ``max_count`` messages and about ``max_bytes`` (always at
        least one), so the writer can put several frames on the wire with one system call."""
        with self._cond:
            batch: list[Message] = []
            size = 0
            for item in self._items:
                if batch and len(batch) >= max_count:
                    break
                message = self._deliverable(item)
                if batch and size + len(message.text) > max_bytes:
                    break
                batch.append(message)
                size += len(message.text)
            return batch

    @staticmethod
    def _deliverable(item: Message) -> Message:
        if item.kind != "output-gap":
            return item
        notice = f"[nixfleet-agent: {item.dropped} output line(s) dropped while disconnected (outbox full)]"
        text = protocol.encode("output", protocol.output(item.command, notice, "stderr"))
        return Message("output", text, True, item.command)

    def pop(self, count: int = 1) -> None:
        """Remove ``count`` messages from the head after they were written to the socket."""
        with self._cond:
            for _ in range(min(count, len(self._items))):
                item = self._items.popleft()
                self._bytes -= len(item.text)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def drain(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait until empty (e.g. before exit after a switch); True if everything was sent.
        ``stop`` ends the wait early (re-checked at least every second)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._cond.wait(remaining if stop is None else min(remaining, 1.0))
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

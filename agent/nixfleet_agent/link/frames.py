"""Inbound WebSocket frames (RFC 6455, client side), parsed incrementally and bounded before buffering.

Why not websocket-client's ``recv_frame``: it reads the announced length with ``recv_strict``, which
collects the whole payload in chunks and joins them (a 50 MiB frame costs ~100 MiB before any size
check can run), blocks the reading thread until the frame is complete (a peer trickling one byte a
second holds it), and accepts frames that RFC 6455 says must fail the connection. Here the reader
thread ``feed``s whatever ``recv`` returned and takes complete events out; a frame whose header
announces more than the limit fails the connection before a byte of its payload is kept, so the
buffer never holds more than one message of at most ``max_message`` bytes plus one read.

websocket-client still does the handshake and every write (masking, the send lock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009


class FrameError(Exception):
    """The peer broke RFC 6455 (or the size bound): fail the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Event:
    kind: str  # "message" | "ping" | "pong" | "close"
    data: bytes


class FrameReader:
    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed frame in _buf (compacted once per feed)
        self._message = bytearray()
        self._fragmented = False  # a text/binary message without FIN is being continued
        self._frame_since: float | None = None  # when the first byte of an incomplete frame came
        self._message_since: float | None = None  # when the first fragment of an open message came

    def feed(self, data: bytes) -> list[Event]:
        """Take newly received bytes; return the complete events they finish, in order."""
        self._buf += data
        events: list[Event] = []
        consumed = False
        try:
            while True:
                event, complete = self._one()
                if not complete:
                    break
                consumed = True
                if event is not None:
                    events.append(event)
        finally:
            del self._buf[:self._pos]
            self._pos = 0
        if not self._buf:
            self._frame_since = None
        elif consumed or self._frame_since is None:
            self._frame_since = time.monotonic()
        return events

    @property
    def partial_since(self) -> float | None:
        """Since when something incomplete (a frame, or a fragmented message) has been held: the
        reader fails the connection when that outlasts its deadline, so a peer that trickles bytes
        or fragments can neither keep commands from being read nor keep a dead link alive."""
        times = [t for t in (self._frame_since, self._message_since) if t is not None]
        return min(times) if times else None

    def _one(self) -> tuple[Event | None, bool]:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 2:
            return None, False
        b0, b1 = buf[pos], buf[pos + 1]
        fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
        if rsv:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        if b1 & 0x80:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "masked frame from the server")
        length, offset = b1 & 0x7F, 2
        if opcode >= 0x8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown control opcode {opcode:#x}")
            if not fin or length > 125:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "fragmented or oversized control frame")
        elif opcode not in (OP_CONT, OP_TEXT, OP_BINARY):
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown data opcode {opcode:#x}")
        elif opcode == OP_CONT and not self._fragmented:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue")
        elif opcode != OP_CONT and self._fragmented:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "new message before the fragmented one ended")
        if length == 126:
            if len(buf) - pos < 4:
                return None, False
            length, offset = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            if len(buf) - pos < 10:
                return None, False
            length, offset = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if length >> 63:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "frame length has the high bit set")
        if opcode < 0x8 and len(self._message) + length > self.max_message:
            # checked on the header, before the payload is buffered
            raise FrameError(CLOSE_TOO_BIG, f"message larger than {self.max_message} bytes "
                                            f"({len(self._message) + length} announced)")
        if len(buf) - pos < offset + length:
            return None, False
        payload = bytes(buf[pos + offset:pos + offset + length])
        self._pos = pos + offset + length
        if opcode == OP_PING:
            return Event("ping", payload), True
        if opcode == OP_PONG:
            return Event("pong", payload), True
        if opcode == OP_CLOSE:
            return Event("close", payload), True
        self._message += payload
        self._fragmented = not fin
        if not fin:
            if self._message_since is None:
                self._message_since = time.monotonic()
            return None, True
        self._message_since = None
        message = bytes(self._message)
        self._message = bytearray()
        return Event("message", message), True

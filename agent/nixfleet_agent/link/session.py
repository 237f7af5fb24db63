"""The dashboard session: dial with Bearer auth, register, keep the link provably alive, reconnect.

One connection thread dials and reads; one writer thread per live socket is the only code that writes
application frames (it also sends our pings and the one pong the reader asks for). A link is declared
dead when nothing (pong or message) arrived for ``ping_timeout`` seconds, or when a written message has
had no evidence of delivery for that long, which catches half-open TCP that would otherwise look
connected forever. Every ping carries ``nf:<seq>`` (the highest message written); its pong is the
evidence that lets the Outbox forget messages (see ``outbox``). The reading thread never waits on a
producer queue (``Outbox.never_block``), a writer failure ends the session at once, and the loop is
supervised: an exception anywhere in a session costs a reconnect, never the link. Reconnects back off
exponentially with full jitter; 401/403 is logged once per streak and waits the maximum so a fleet with
a rotated token never hammers the server.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable

import websocket

from .. import log
from ..config import Config
from . import protocol
from .backoff import Backoff
from .dial import AuthError, describe, dial
from .frames import FrameError, FrameReader
from .outbox import Message, Outbox, evidence_payload, parse_evidence
from .sockets import abort, send_close, send_text_frames, shutdown_socket

STABLE_AFTER = 10.0  # seconds a registered session must last before backoff resets
BATCH_MESSAGES = 256  # frames written with one system call when the queue holds several
BATCH_BYTES = 64 * 1024
READ_BYTES = 64 * 1024  # one recv; the frame buffer holds at most one message plus this
CLOSE_LOCK_WAIT = 1.0  # a deliberate close waits this long for a busy writer, never for a stuck one
FAST_ATTEMPTS = 10  # redials at <= 1 s spacing before backing off: a dashboard restart takes seconds
_log = log.get("connection")
_DEADLINE_HINTS = {
    "ping timeout": "no pong or message from the dashboard; treating the link as dead",
    "no delivery evidence": "written messages were never confirmed; resending them on the next link",
    "incomplete frame": "a frame or fragmented message stayed incomplete; treating the link as broken",
}


class _Session:
    """State of one live socket; the writer thread and the reader share it."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.dead = threading.Event()
        self.registered = threading.Event()
        self.pong: bytes | None = None  # at most one pending pong: a ping flood costs nothing
        self.evidence_asked = 0  # seq of the last evidence ping not yet answered (0 = none)
        self.lock = threading.Lock()
        self.close_reason: str | None = None


class Connection:
    def __init__(
        self,
        cfg: Config,
        outbox: Outbox,
        *,
        build_register: Callable[[], str],
        on_message: Callable[[protocol.Inbound], None],
        on_registered: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self._build_register = build_register
        self._on_message = on_message
        self._on_registered = on_registered
        self._stop = stop
        self._session: _Session | None = None
        self._thread: threading.Thread | None = None
        self._reconnect_now = threading.Event()
        self._wake = threading.Event()
        self.sessions = 0

    # -- public --------------------------------------------------------------------------------
    @property
    def registered(self) -> bool:
        session = self._session
        return bool(session and session.registered.is_set() and not session.dead.is_set())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="connection", daemon=True)
        self._thread.start()

    def reconnect(self) -> None:
        """Close the live socket (1000) and register again right away (switch completion)."""
        session = self._session
        if session is None or session.dead.is_set():
            self._wake.set()  # not connected: skip the rest of the backoff wait and dial now
            return
        self._reconnect_now.set()
        self._close_session("reconnect")

    def shutdown(self, reason: str = "shutdown", timeout: float = 5.0) -> None:
        """Close with 1000 and end the loop; the caller has already set the stop event."""
        self._wake.set()
        self._close_session(reason)
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- connection loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        self.outbox.never_block(threading.current_thread())
        while not self._stop.is_set():
            try:
                self._dial_loop()
            except Exception as exc:  # noqa: BLE001 - supervision: a bug costs a reconnect, never the link
                _log.error("connection_loop_failed", error=f"{type(exc).__name__}: {describe(exc)}")
                self._session = None
                self.outbox.set_live(False)
                self._wake.wait(1.0)
                self._wake.clear()

    def _dial_loop(self) -> None:
        backoff = Backoff(1.0, float(self.cfg.backoff_max), fast_attempts=FAST_ATTEMPTS)
        auth_streak = 0
        while not self._stop.is_set():
            try:
                ws = dial(self.cfg)
            except AuthError as exc:
                auth_streak += 1
                delay = backoff.to_max()
                if auth_streak == 1:
                    _log.error("auth_failed", status=exc.status, url=self.cfg.url, retry_in=round(delay, 1),
                               hint="token rejected by the dashboard; retrying at the maximum backoff")
                else:
                    _log.debug("auth_failed", status=exc.status, streak=auth_streak, retry_in=round(delay, 1))
            except Exception as exc:  # noqa: BLE001 - any dial failure means: wait and retry
                delay = backoff.next()
                _log.warn("connect_failed", url=self.cfg.url, error=describe(exc), retry_in=round(delay, 1))
            else:
                if auth_streak:
                    _log.info("auth_recovered", after_failures=auth_streak)
                    backoff.reset()  # the maximum was for the rejected token, not for this link
                auth_streak = 0
                started = time.monotonic()
                registered = self._run_session(ws)
                if self._stop.is_set():
                    break
                if registered and time.monotonic() - started >= STABLE_AFTER:
                    backoff.reset()
                if self._reconnect_now.is_set():
                    self._reconnect_now.clear()
                    backoff.reset()
                    delay = 0.0
                else:
                    delay = backoff.next()
                _log.info("reconnecting", retry_in=round(delay, 1))
            if self._stop.is_set():
                break
            self._wake.wait(delay)  # set by shutdown(), or by reconnect() to dial at once
            self._wake.clear()

    def _run_session(self, ws: websocket.WebSocket) -> bool:
        session = _Session(ws)
        self.sessions += 1
        try:
            ws.send(self._build_register())  # first frame on every connection, before the writer runs
        except Exception as exc:  # noqa: BLE001
            _log.warn("register_send_failed", error=describe(exc))
            abort(ws)
            return False
        self._session = session
        _log.info("connected", url=self.cfg.url, session=self.sessions)
        writer = threading.Thread(target=self._writer, args=(session,), name="writer", daemon=True)
        writer.start()
        reason = "closed"
        try:
            reason = self._reader(session)
        finally:
            session.dead.set()
            was_registered = session.registered.is_set()
            session.registered.clear()
            shutdown_socket(ws)  # unblocks a writer stuck in send() on a dead link
            self.outbox.set_live(False)
            self.outbox.kick()
            writer.join(5.0)
            abort(ws)
            self._session = None
        level = _log.info if session.close_reason or self._stop.is_set() else _log.warn
        level("disconnected", reason=session.close_reason or reason, queued=len(self.outbox))
        return was_registered

    def _reader(self, session: _Session) -> str:
        """Read with one deadline for everything: the ping deadline (nothing complete arrived),
        the delivery deadline (written messages without evidence) and the partial-frame deadline
        (an incomplete frame or fragmented message held too long). Only complete frames count as
        life, so a peer trickling bytes cannot keep a dead link open or commands from being read."""
        ws = session.ws
        limit = float(self.cfg.ping_timeout)
        last_rx = time.monotonic()
        frames = FrameReader(protocol.MAX_INBOUND_BYTES)
        while not session.dead.is_set():
            now = time.monotonic()
            deadlines = {"ping timeout": last_rx + limit}
            unconfirmed = self.outbox.unconfirmed_since()
            if unconfirmed is not None:
                deadlines["no delivery evidence"] = unconfirmed + limit
            partial = frames.partial_since
            if partial is not None:
                deadlines["incomplete frame"] = partial + limit
            reason, deadline = min(deadlines.items(), key=lambda item: item[1])
            if deadline <= now:
                _log.warn(reason.replace(" ", "_"), seconds=self.cfg.ping_timeout, in_flight=self.outbox.inflight(),
                          hint=_DEADLINE_HINTS[reason])
                return reason
            sock = ws.sock
            if sock is None:
                return "socket closed"
            pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS-buffered bytes
            if not pending:
                try:
                    readable, _, _ = select.select([sock], [], [], deadline - now)
                except (OSError, ValueError):
                    return "socket closed"
                if not readable:
                    continue
            if session.dead.is_set():
                break
            try:
                data = sock.recv(READ_BYTES)
            except (TimeoutError, BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if type(exc).__name__ in ("SSLWantReadError", "SSLWantWriteError"):
                    continue
                return describe(exc)
            if not data:
                return "connection closed by peer"
            try:
                events = frames.feed(data)
            except FrameError as exc:
                _log.warn("protocol_violation", reason=exc.reason, close_code=exc.code)
                send_close(ws, exc.code, exc.reason)
                return f"protocol violation: {exc.reason}"
            for event in events:
                last_rx = time.monotonic()
                if event.kind == "ping":
                    with session.lock:
                        session.pong = event.data  # replaces an unsent one (RFC 6455 5.5.3)
                    self.outbox.kick()
                elif event.kind == "pong":
                    self._on_pong(session, event.data)
                elif event.kind == "close":
                    code = int.from_bytes(event.data[:2], "big") if len(event.data) >= 2 else 1005
                    send_close(ws, websocket.STATUS_NORMAL, "")  # the closing handshake's reply
                    return f"closed by dashboard (code {code})"
                else:
                    self._handle(session, event.data)
                if session.dead.is_set():
                    break
        return "closed"

    def _handle(self, session: _Session, data: bytes) -> None:
        try:
            message = protocol.parse(data)
        except protocol.ProtocolError as exc:
            sample = data[:120].decode("utf-8", "replace")
            _log.warn("message_ignored", type=exc.kind or "?", reason=exc.reason, sample=sample)
            return
        if isinstance(message, protocol.Registered):
            first = not session.registered.is_set()
            session.registered.set()
            self.outbox.set_live(True)
            if first:
                _log.info("registered", host=message.host_id or self.cfg.hostname, queued=len(self.outbox))
                try:
                    self._on_registered()
                except Exception as exc:  # noqa: BLE001 - a callback bug must not cost the session
                    _log.error("registered_handler_failed", error=f"{type(exc).__name__}: {describe(exc)}")
            return
        try:
            self._on_message(message)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the session
            _log.error("message_handler_failed", type=type(message).__name__, error=describe(exc))

    # -- writer --------------------------------------------------------------------------------
    def _on_pong(self, session: _Session, payload: bytes) -> None:
        upto = parse_evidence(payload)
        if upto is None:
            return
        self.outbox.delivered(upto)
        with session.lock:
            if session.evidence_asked and upto >= session.evidence_asked:
                session.evidence_asked = 0
        if self.outbox.written_seq > upto:
            self.outbox.kick()  # more was written since that ping: ask again

    def _writer(self, session: _Session) -> None:
        ws = session.ws
        next_ping = time.monotonic() + self.cfg.ping_interval
        batch: list[Message] = []
        try:
            while not session.dead.is_set():
                with session.lock:
                    pong, session.pong = session.pong, None
                if pong is not None:
                    ws.pong(pong)
                now = time.monotonic()
                written = self.outbox.written_seq
                with session.lock:
                    ask = written > 0 and not session.evidence_asked and self.outbox.inflight() > 0
                    if ask:
                        session.evidence_asked = written
                if ask or now >= next_ping:
                    ws.ping(evidence_payload(written))  # its pong confirms everything up to `written`
                    next_ping = now + self.cfg.ping_interval
                if session.registered.is_set():
                    batch = self.outbox.take(BATCH_MESSAGES, BATCH_BYTES)
                    if batch:
                        send_text_frames(ws, [self.outbox.wire_text(m) for m in batch])
                        self.outbox.written(batch)
                        batch = []
                        continue
                self.outbox.wait(max(0.0, next_ping - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - a failed write ends the session at once
            if batch:
                self.outbox.unwritten(batch)
            if not session.dead.is_set():
                _log.warn("write_failed", error=describe(exc))
            session.dead.set()
            shutdown_socket(ws)

    def _close_session(self, reason: str) -> None:
        session = self._session
        if session is None or session.dead.is_set():
            return
        session.close_reason = reason
        session.dead.set()
        self.outbox.kick()
        # never ws.send_close(): it waits for the send lock, which a writer stuck on a peer that does
        # not read holds for up to ping_timeout, and shutdown/reconnect must not wait for that
        send_close(session.ws, websocket.STATUS_NORMAL, reason, wait=CLOSE_LOCK_WAIT)
        shutdown_socket(session.ws)

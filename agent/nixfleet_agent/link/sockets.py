"""Socket primitives of a live WebSocket that must never block the thread calling them.

Kept apart from ``session`` because both the dialer (a handshake deadline shuts the socket down) and
the session (reader, writer, close) use them, and "who may block on the send lock" is decided here.
"""

from __future__ import annotations

import select

import websocket
from websocket import ABNF


def send_text_frames(ws: websocket.WebSocket, batch: list[str]) -> None:
    """One masked text frame per message, exactly as ``ws.send`` would make them, but written with a
    single ``sendall``: a 200,000-line command then costs a few thousand system calls, not 200,000.
    ``ws.lock`` is websocket-client's own send lock (enable_multithread=True)."""
    data = b"".join(ABNF.create_frame(text, ABNF.OPCODE_TEXT).format() for text in batch)
    sock = ws.sock
    if sock is None:
        raise websocket.WebSocketConnectionClosedException("socket is already closed")
    with ws.lock:
        sock.sendall(data)


def send_close(ws: websocket.WebSocket, code: int, reason: str, wait: float = 0.0) -> None:
    """A close frame, only if that cannot block for long: the send lock is waited for at most
    ``wait`` s (the reading thread: 0; a deliberate close: about a second, enough for a writer that
    is merely busy, while one stuck on a peer that does not read is not waited for), and nothing is
    written into a full buffer."""
    sock = ws.sock
    if sock is None:
        return
    locked = ws.lock.acquire(timeout=wait) if wait > 0 else ws.lock.acquire(blocking=False)
    if not locked:
        return
    try:
        _, writable, _ = select.select([], [sock], [], wait)
        if writable:
            frame = ABNF.create_frame(code.to_bytes(2, "big") + reason.encode()[:120], ABNF.OPCODE_CLOSE)
            sock.sendall(frame.format())
    except Exception:  # noqa: BLE001 - the peer may already be gone
        pass
    finally:
        ws.lock.release()


def shutdown_socket(ws: websocket.WebSocket) -> None:
    """Wake a reader blocked in select() by shutting the socket down (close alone does not)."""
    sock = ws.sock
    if sock is None:
        return
    try:
        sock.shutdown(2)
    except OSError:
        pass


def abort(ws: websocket.WebSocket) -> None:
    shutdown_socket(ws)
    try:
        ws.shutdown()
    except Exception:  # noqa: BLE001
        pass

"""Dialing the dashboard: one authenticated upgrade, bounded as a whole, never following a redirect.

Separate from ``session`` because ``nixfleet-agent check`` dials exactly the same way without a
session, and the errors it raises are what ``check`` and the dial loop report.
"""

from __future__ import annotations

import sys
import threading

import websocket

from ..config import Config
from ..redact import redact
from .sockets import abort, shutdown_socket


class AuthError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class RedirectRefused(Exception):
    """The dashboard answered the upgrade with a redirect. Following it would send the token to
    whatever host ``Location`` names (and may downgrade wss:// to ws://), so it is an error."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(f"HTTP {status} redirect to {redact(location) or '(no Location)'} refused; "
                         "the token is only sent to the configured url (set url to the new address)")


class HandshakeDeadline(Exception):
    """The whole upgrade (TCP, TLS, HTTP) took longer than handshake_timeout."""


def describe(exc: BaseException) -> str:
    """A short, token-free description of a dial error."""
    if isinstance(exc, (RedirectRefused, HandshakeDeadline)):
        return str(exc)
    if isinstance(exc, websocket.WebSocketBadStatusException):
        return f"HTTP {exc.status_code}"
    ssl = sys.modules.get("ssl")  # only loaded for wss:// (see cli.avoid_tls_libraries)
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return f"TLS: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return redact(text.splitlines()[0][:200])


def dial(cfg: Config) -> websocket.WebSocket:
    """Open one authenticated WebSocket; raises AuthError on 401/403, RedirectRefused on 3xx,
    HandshakeDeadline when the whole upgrade outlasts handshake_timeout, other exceptions otherwise.

    websocket-client's own timeout applies to each recv, and it reads the response headers one byte
    per recv, so a server trickling a byte a second would hold it for ever: a timer bounds the whole
    handshake by shutting the socket down. Redirects are never followed (``redirect_limit=0``)."""
    sslopt: dict[str, object] = {}
    if cfg.ca_file:
        sslopt["ca_certs"] = cfg.ca_file
    ws = websocket.WebSocket(sslopt=sslopt, enable_multithread=True, skip_utf8_validation=True)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        shutdown_socket(ws)

    timer = threading.Timer(cfg.handshake_timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        ws.connect(
            cfg.url,
            header=["Authorization: Bearer " + cfg.token.reveal()],
            timeout=cfg.handshake_timeout,
            suppress_origin=True,
            redirect_limit=0,
        )
    except websocket.WebSocketBadStatusException as exc:
        ws.shutdown()
        if exc.status_code in (401, 403):
            raise AuthError(exc.status_code) from None
        raise
    except BaseException:
        response = getattr(ws, "handshake_response", None)
        ws.shutdown()
        if expired.is_set():
            raise HandshakeDeadline(f"handshake timed out (not complete within {cfg.handshake_timeout} s)") from None
        status = getattr(response, "status", 0)
        if 300 <= int(status or 0) < 400:
            headers = getattr(response, "headers", None) or {}
            raise RedirectRefused(int(status), str(headers.get("location", ""))) from None
        raise
    finally:
        timer.cancel()
    if expired.is_set():
        abort(ws)
        raise HandshakeDeadline(f"handshake timed out (not complete within {cfg.handshake_timeout} s)")
    ws.settimeout(cfg.ping_timeout)
    return ws

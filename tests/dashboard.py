"""Reference NixFleet dashboard: the server side of the agent protocol, for tests, the demo and VM tests.

It behaves like the upstream Go dashboard where the agent can tell (single ``/ws`` endpoint, exact
``Authorization: Bearer <token>`` check answered with HTTP 401 ``Unauthorized``, ``registered`` reply to
every ``register``, a new registration replacing the old connection of the same host, 512 KiB inbound
limit, no compression) and adds the knobs tests need: record every message, send commands and
``kill_command``, drop connections without a close frame, stop reading (no pongs: a half-open link),
restart on the same port, answer every upgrade with a chosen HTTP status.

Library use (tests)::

    dash = Dashboard(token="t").start()
    rec = dash.wait_message("register", timeout=5)
    dash.send_command("web1", "pull")
    dash.stop()

CLI use (demo, NixOS VM tests)::

    python tests/dashboard.py --port 8000 --token-file /run/token [--listen 0.0.0.0]
        [--command pull --to web1] [--exit-after-status]

The CLI prints one JSON line per received message on stdout and serves a small control API on the
same port (all but /health need the same Bearer token):
``GET /health``, ``GET /api/hosts``, ``GET /api/messages?host=H&type=T&since=N``,
``GET /api/command?host=H&command=C``, ``GET /api/kill?host=H&signal=SIGTERM&pid=0``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

try:
    from websockets.asyncio.server import Server, ServerConnection, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response
except ModuleNotFoundError as missing:
    if __name__ != "__main__":
        raise
    # run as a program by an interpreter without the package (Debian's python3: it is in dev/test's venv)
    sys.exit(f"tests/dashboard.py: the Python package {missing.name!r} is not installed for {sys.executable}; "
             "run ./dev/dashboard instead (same arguments; it uses the environment ./dev/test set up)")

MAX_SIZE = 512 * 1024


@dataclass
class Record:
    """One message received from an agent."""

    index: int
    host: str  # hostname from this connection's register ("" before it)
    type: str
    payload: Any
    size: int  # bytes of the frame as received
    t: float  # time.monotonic() when received
    conn: int  # connection number (1, 2, ...), increases on every accepted socket
    raw: str = ""


@dataclass
class Host:
    hostname: str
    connected: bool = False
    registrations: int = 0
    last_heartbeat: float | None = None
    conn: int = 0
    register: dict[str, Any] = field(default_factory=dict)


class Dashboard:
    def __init__(
        self,
        token: str = "test-token",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        self.token = token
        self.listen = host
        self.port = port
        self.ssl_context = ssl_context
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.on_record = on_record
        # behaviour knobs, changeable at any time
        self.reject_status: int | None = None  # answer every /ws upgrade with this HTTP status
        self.auto_register = True  # reply `registered` to `register`
        # observations
        self.records: list[Record] = []
        self.hosts: dict[str, Host] = {}
        self.attempts: list[tuple[float, int]] = []  # (monotonic time, HTTP status answered; 101 = upgraded)
        self.request_headers: list[dict[str, str]] = []
        self.closes: list[tuple[int, int | None, str]] = []  # (conn, close code from agent, reason)
        self._cond = threading.Condition()
        self._conns: dict[int, ServerConnection] = {}
        self._conn_host: dict[int, str] = {}
        self._next_conn = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://{self.listen}:{self.port}/ws"

    def start(self) -> Dashboard:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="dashboard", daemon=True)
            self._thread.start()
        self._call(self._start_server())
        return self

    def stop(self) -> None:
        """Stop listening and cut every connection without a close frame (a crashed server)."""
        if self._loop is None:
            return
        self._call(self._stop_server())

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self._call(self._start_server())

    def close(self) -> None:
        """Stop the server and its event loop thread (end of test)."""
        if self._loop is None:
            return
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None, "dashboard not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_server(self) -> None:
        self._server = await serve(
            self._handler,
            self.listen,
            self.port,
            ssl=self.ssl_context,
            process_request=self._process_request,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            max_size=MAX_SIZE,
            compression=None,
            server_header=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_server(self) -> None:
        if self._server is None:
            return
        self._server.close(close_connections=False)
        for conn in list(self._conns.values()):
            conn.transport.abort()
        await self._server.wait_closed()
        self._server = None

    # ------------------------------------------------------------------ HTTP side
    def _authorized(self, request: Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path)
        if path.path == "/health":
            return _json_response(conn, 200, {"status": "ok"})
        if path.path.startswith("/api/"):
            if not self._authorized(request):
                return conn.respond(401, "Unauthorized\n")
            return self._api(conn, path.path, parse_qs(path.query))
        with self._cond:
            self.request_headers.append({k: v for k, v in request.headers.raw_items() if k.lower() != "authorization"})
            status = self.reject_status or (101 if self._authorized(request) else 401)
            self.attempts.append((time.monotonic(), status))
            self._cond.notify_all()
        if status == 101:
            return None
        return conn.respond(status, "Unauthorized\n" if status == 401 else "Rejected\n")

    def _api(self, conn: ServerConnection, path: str, query: dict[str, list[str]]) -> Response:
        arg = lambda name, default="": query.get(name, [default])[0]
        if path == "/api/hosts":
            with self._cond:
                body = {name: {"connected": h.connected, "registrations": h.registrations,
                               "last_heartbeat_age": None if h.last_heartbeat is None else time.monotonic() - h.last_heartbeat,
                               "register": h.register} for name, h in self.hosts.items()}
            return _json_response(conn, 200, body)
        if path == "/api/messages":
            since = int(arg("since", "0") or 0)
            with self._cond:
                body = [{"index": r.index, "host": r.host, "type": r.type, "payload": r.payload}
                        for r in self.records[since:]
                        if (not arg("host") or r.host == arg("host")) and (not arg("type") or r.type == arg("type"))]
            return _json_response(conn, 200, body)
        if path == "/api/command":
            ok = self._send_nowait(arg("host"), {"type": "command", "payload": {"command": arg("command")}})
            return _json_response(conn, 200 if ok else 404, {"sent": ok})
        if path == "/api/kill":
            payload = {"signal": arg("signal", "SIGTERM"), "pid": int(arg("pid", "0") or 0)}
            ok = self._send_nowait(arg("host"), {"type": "kill_command", "payload": payload})
            return _json_response(conn, 200 if ok else 404, {"sent": ok})
        return conn.respond(404, "Not found\n")

    # ------------------------------------------------------------------ WebSocket side
    async def _handler(self, conn: ServerConnection) -> None:
        with self._cond:
            self._next_conn += 1
            number = self._next_conn
            self._conns[number] = conn
            self._conn_host[number] = ""
        try:
            async for raw in conn:
                text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                await self._on_frame(number, conn, text)
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                rcvd = conn.protocol.close_rcvd
                self.closes.append((number, rcvd.code if rcvd else None, rcvd.reason if rcvd else ""))
                self._conns.pop(number, None)
                host = self._conn_host.pop(number, "")
                if host and self.hosts.get(host) and self.hosts[host].conn == number:
                    self.hosts[host].connected = False
                self._cond.notify_all()

    async def _on_frame(self, number: int, conn: ServerConnection, text: str) -> None:
        try:
            message = json.loads(text)
            kind = str(message.get("type", ""))
            payload = message.get("payload")
        except (ValueError, AttributeError):
            kind, payload = "<invalid>", text
        replaced: ServerConnection | None = None
        with self._cond:
            if kind == "register" and isinstance(payload, dict):
                name = str(payload.get("hostname", ""))
                self._conn_host[number] = name
                host = self.hosts.setdefault(name, Host(name))
                if host.connected and host.conn != number:
                    replaced = self._conns.get(host.conn)
                host.connected, host.conn, host.register = True, number, payload
                host.registrations += 1
            name = self._conn_host[number]
            if kind == "heartbeat" and name in self.hosts:
                self.hosts[name].last_heartbeat = time.monotonic()
            record = Record(len(self.records), name, kind, payload, len(text.encode()), time.monotonic(), number, text)
            self.records.append(record)
            self._cond.notify_all()
        if self.on_record:
            self.on_record(record)
        if replaced is not None:  # like upstream: the old socket is closed without waiting for it
            task = asyncio.ensure_future(replaced.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if kind == "register" and self.auto_register:
            await conn.send(json.dumps({"type": "registered", "payload": {"host_id": name}}))

    # ------------------------------------------------------------------ actions
    def _conn_for(self, host: str | None) -> ServerConnection | None:
        with self._cond:
            if host is None:
                candidates = [h for h in self.hosts.values() if h.connected]
                if len(candidates) != 1:
                    return None
                host = candidates[0].hostname
            state = self.hosts.get(host)
            if not state or not state.connected:
                return None
            return self._conns.get(state.conn)

    def _send_nowait(self, host: str | None, message: Any) -> bool:
        """From the event loop thread (control API): schedule a send, report whether a target exists."""
        conn = self._conn_for(host or None)
        if conn is None:
            return False
        text = message if isinstance(message, (str, bytes)) else json.dumps(message)
        asyncio.ensure_future(conn.send(text))
        return True

    def send_raw(self, host: str | None, data: str | bytes) -> None:
        """Send one frame verbatim (text for str, binary for bytes) to a connected host."""
        conn = self._conn_for(host)
        if conn is None:
            raise LookupError(f"host {host!r} is not connected")
        self._call(conn.send(data))

    def send(self, host: str | None, kind: str, payload: Any) -> None:
        self.send_raw(host, json.dumps({"type": kind, "payload": payload}))

    def send_command(self, host: str | None, command: str) -> None:
        self.send(host, "command", {"command": command})

    def send_kill(self, host: str | None, signal: str = "SIGTERM", pid: int = 0) -> None:
        self.send(host, "kill_command", {"signal": signal, "pid": pid})

    def drop(self, host: str | None = None) -> None:
        """Cut the host's TCP connection without a close frame (network failure)."""
        conn = self._conn_for(host)
        if conn is not None:
            self._loop.call_soon_threadsafe(conn.transport.abort)  # type: ignore[union-attr]

    def close_conn(self, host: str | None = None, code: int = 1000, reason: str = "") -> None:
        conn = self._conn_for(host)
        if conn is not None:
            self._call(conn.close(code, reason))

    def freeze(self, host: str | None = None) -> None:
        """Stop reading the host's socket: no pongs, no messages - a half-open link to the agent."""
        conn = self._conn_for(host)
        if conn is not None:
            self._loop.call_soon_threadsafe(conn.transport.pause_reading)  # type: ignore[union-attr]

    def thaw(self, host: str | None = None) -> None:
        """Undo freeze(): read the host's socket again (buffered frames are then processed)."""
        conn = self._conn_for(host)
        if conn is not None:
            self._loop.call_soon_threadsafe(conn.transport.resume_reading)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ queries
    def messages(self, kind: str | None = None, host: str | None = None, since: int = 0) -> list[Record]:
        with self._cond:
            return [r for r in self.records[since:] if (kind is None or r.type == kind) and (host is None or r.host == host)]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until predicate() is truthy (re-checked on every event); return it or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout} s")
                self._cond.wait(min(remaining, 0.5))

    def wait_message(
        self,
        kind: str,
        host: str | None = None,
        *,
        since: int = 0,
        where: Callable[[Record], bool] | None = None,
        timeout: float = 5.0,
    ) -> Record:
        def find() -> Record | None:
            for record in self.records[since:]:
                if record.type == kind and (host is None or record.host == host) and (where is None or where(record)):
                    return record
            return None

        try:
            return self.wait_for(find, timeout)
        except TimeoutError:
            seen = [r.type for r in self.records[since:]][-20:]
            raise TimeoutError(f"no {kind!r} message within {timeout} s (last seen: {seen})") from None

    def mark(self) -> int:
        """Current record count, to wait only for messages that arrive after this point."""
        with self._cond:
            return len(self.records)

    def connected(self, host: str) -> bool:
        with self._cond:
            return bool(self.hosts.get(host) and self.hosts[host].connected)


def _json_response(conn: ServerConnection, status: int, body: Any) -> Response:
    response = conn.respond(status, json.dumps(body, indent=1) + "\n")
    response.headers["Content-Type"] = "application/json"
    return response


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--token-file", required=True, help="file holding the agent token (bare or NIXFLEET_TOKEN=...)")
    parser.add_argument("--tls-cert", help="serve wss:// with this certificate chain (PEM)")
    parser.add_argument("--tls-key", help="private key for --tls-cert")
    parser.add_argument("--command", help="send this command to --to once that host has registered")
    parser.add_argument("--to", help="hostname for --command")
    parser.add_argument("--exit-after-status", action="store_true", help="exit 0/1 after the command's status")
    args = parser.parse_args(argv)
    try:
        with open(args.token_file, encoding="utf-8") as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        parser.error(f"--token-file {args.token_file}: {getattr(exc, 'strerror', None) or exc}")
    token = text.split("=", 1)[1].strip() if text.startswith("NIXFLEET_TOKEN=") else text
    if not token:
        parser.error(f"--token-file {args.token_file}: holds no token")
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    done = threading.Event()
    result = {"code": 0}

    def show(record: Record) -> None:
        print(json.dumps({"host": record.host, "type": record.type, "payload": record.payload}), flush=True)
        if args.command and record.type == "status" and record.payload.get("command") == args.command:
            result["code"] = 0 if record.payload.get("exit_code") == 0 else 1
            done.set()

    dash = Dashboard(token, args.listen, args.port, ssl_context=context, on_record=show).start()
    print(f"listening {dash.url}", file=sys.stderr, flush=True)
    try:
        if args.command:
            dash.wait_for(lambda: dash.connected(args.to) and dash.messages("heartbeat", args.to), timeout=24 * 3600)
            dash.send_command(args.to, args.command)
        if args.exit_after_status:
            done.wait()
            return result["code"]
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        dash.close()
    return result["code"]


if __name__ == "__main__":
    sys.exit(main())

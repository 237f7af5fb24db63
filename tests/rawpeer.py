"""A raw-frame WebSocket dashboard: does the upgrade by hand, then sends exactly the bytes a test
crafts (orphan continuations, oversized or trickled frames, ping floods) - things no well-behaved
server library will send.

    peer = RawPeer().start()
    conn = peer.accept()              # upgrade done, the agent's register read, `registered` sent
    conn.send_frame(0x9, b"x" * 125)  # a ping
    conn.send_frame(0x0, b"...")      # an orphan continuation
    conn.recv_frame()                 # (fin, opcode, payload) of the agent's next frame (unmasked)
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import socket
import struct
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, length: int | None = None) -> bytes:
    """An unmasked server frame; ``length`` overrides the announced length (to lie about it)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("agent closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def handshake(self) -> None:
        while b"\r\n\r\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self._buf += chunk
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        key = ""
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())

    def recv_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        mask = self._read(4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(self._read(n)))
        return bool(b0 & 0x80), b0 & 0x0F, data

    def recv_message(self, kind: str) -> dict:
        """The next text frame of type ``kind`` (other frames are skipped; pings answered)."""
        while True:
            _, opcode, data = self.recv_frame()
            if opcode == 0x9:
                self.send_frame(0xA, data)
            elif opcode == 0x1:
                message = json.loads(data)
                if message.get("type") == kind:
                    return message

    def send_frame(self, opcode: int, payload: bytes, **kw: object) -> None:
        self.sock.sendall(frame(opcode, payload, **kw))  # type: ignore[arg-type]

    def send_json(self, kind: str, payload: dict) -> None:
        self.send_frame(0x1, json.dumps({"type": kind, "payload": payload}).encode())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RawPeer:
    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._accepted: queue.Queue[Conn] = queue.Queue()
        self.conns: list[Conn] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> RawPeer:
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            conn = Conn(sock)
            self.conns.append(conn)
            self._accepted.put(conn)

    def accept(self, timeout: float = 15.0, register: bool = True) -> Conn:
        """The next connection, upgraded; with ``register`` its register read and answered."""
        conn = self._accepted.get(timeout=timeout)
        conn.sock.settimeout(timeout)
        conn.handshake()
        if register:
            message = conn.recv_message("register")
            conn.send_json("registered", {"host_id": message["payload"].get("hostname", "")})
        return conn

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()

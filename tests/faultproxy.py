"""A fault-injecting TCP proxy for link tests: put it between the agent and the dashboard and break
the link in the ways real networks do.

    proxy = FaultProxy(dashboard.port).start()
    env = agent_env(NIXFLEET_URL=proxy.url)
    ...
    link = proxy.wait_link()         # the newest connection
    link.freeze("up")                # stop reading from the agent: its send buffer fills
    link.blackhole("up")             # read the agent's bytes and discard them (half-open link)
    link.trickle("down", 0.05)       # forward dashboard bytes one at a time, 50 ms apart
    link.rst()                       # abort both sides with a TCP RST
    proxy.close()

Directions: "up" is agent -> dashboard, "down" is dashboard -> agent, "both" is both. Freezing a
direction stops *reading* its source, so the kernel buffers fill and the sender blocks, exactly like
a peer that stopped reading. Socket buffers are kept small so that happens after a few KiB.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

BUFFER = 8192
DIRECTIONS = ("up", "down")


def _directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be up, down or both, not {direction!r}")
    return (direction,)


class Link:
    """One proxied connection (agent socket <-> dashboard socket) and its faults."""

    def __init__(self, agent: socket.socket, dashboard: socket.socket) -> None:
        self.agent = agent
        self.dashboard = dashboard
        self.mode = {"up": "pass", "down": "pass"}  # pass | freeze | blackhole | trickle
        self.delay = {"up": 0.0, "down": 0.0}
        self.bytes = {"up": 0, "down": 0}
        self.closed = threading.Event()
        self._cond = threading.Condition()
        for direction, src, dst in (("up", agent, dashboard), ("down", dashboard, agent)):
            threading.Thread(target=self._pump, args=(direction, src, dst), daemon=True,
                             name=f"proxy-{direction}").start()

    def _set(self, direction: str, mode: str, delay: float = 0.0) -> Link:
        with self._cond:
            for d in _directions(direction):
                self.mode[d], self.delay[d] = mode, delay
            self._cond.notify_all()
        return self

    def freeze(self, direction: str = "both") -> Link:
        return self._set(direction, "freeze")

    def blackhole(self, direction: str = "both") -> Link:
        return self._set(direction, "blackhole")

    def trickle(self, direction: str, delay: float) -> Link:
        return self._set(direction, "trickle", delay)

    def thaw(self, direction: str = "both") -> Link:
        return self._set(direction, "pass")

    def rst(self) -> None:
        """Abort both TCP connections with RST (SO_LINGER 0), like a middlebox resetting the flow."""
        for sock in (self.agent, self.dashboard):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass
        self.closed.set()
        with self._cond:
            self._cond.notify_all()

    def _current(self, direction: str) -> tuple[str, float]:
        """The direction's mode, once it is not frozen (a frozen direction waits here)."""
        with self._cond:
            while self.mode[direction] == "freeze" and not self.closed.is_set():
                self._cond.wait(0.5)
            return self.mode[direction], self.delay[direction]

    def _pump(self, direction: str, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                mode, _ = self._current(direction)
                if self.closed.is_set():
                    return
                data = src.recv(1 if mode == "trickle" else BUFFER)
                if not data:
                    break
                mode, delay = self._current(direction)  # the fault may have changed during recv
                if mode != "blackhole":
                    dst.sendall(data)
                    self.bytes[direction] += len(data)
                if mode == "trickle":
                    time.sleep(delay)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)  # inherited by accepted sockets
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.links: list[Link] = []
        self._cond = threading.Condition()
        self._closed = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()
        return self

    def _accept(self) -> None:
        while not self._closed:
            try:
                agent, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.socket()
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
                upstream.connect(self.target)
            except OSError:
                agent.close()
                continue
            agent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
            with self._cond:
                self.links.append(Link(agent, upstream))
                self._cond.notify_all()

    def wait_link(self, count: int = 1, timeout: float = 10.0) -> Link:
        """The newest link once at least ``count`` connections were accepted."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.links) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"fewer than {count} connections through the proxy within {timeout} s")
                self._cond.wait(remaining)
            return self.links[-1]

    def close(self) -> None:
        self._closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        for link in self.links:
            link.rst()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

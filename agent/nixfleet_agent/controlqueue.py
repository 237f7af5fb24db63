"""One thread for the control path: stop / kill / restart / reboot requests and SIGKILL escalations.

Why: these arrive on the connection thread, which must never block, and used to get a thread each
(plus a ``threading.Timer`` per escalation) - 5,000 ``kill`` messages meant 5,000 threads and timers,
and under a task limit kills were silently lost. Here a request whose key is already pending is
coalesced into it (the same kill twice is one kill), the queue is bounded, an escalation is one
deadline per PID (a second SIGTERM does not start a second countdown), and the one worker thread
is started lazily and restarted by the next request if starting it ever failed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from . import log

MAX_PENDING = 64
IDLE_WAIT = 300.0  # an idle worker wakes this rarely: every wait has a deadline, idle CPU stays ~0
_log = log.get("control")


class ControlQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[tuple[Hashable, Callable[[], None]]] = deque()
        self._keys: set[Hashable] = set()
        self._timers: dict[Hashable, tuple[float, Callable[[], None]]] = {}
        self._thread: threading.Thread | None = None
        self.coalesced = 0
        self.refused = 0

    def submit(self, key: Hashable, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on the control thread unless a request with ``key`` is already pending (or
        the queue is full); never blocks. True if queued."""
        with self._cond:
            if key in self._keys:
                self.coalesced += 1
                return False
            if len(self._queue) >= MAX_PENDING:
                self.refused += 1
                _log.warn("control_request_refused", key=str(key), pending=len(self._queue),
                          hint="too many control requests pending")
                return False
            self._queue.append((key, fn))
            self._keys.add(key)
            self._ensure_thread_locked()
            self._cond.notify_all()
            return True

    def after(self, delay: float, key: Hashable, fn: Callable[[], None]) -> bool:
        """Run ``fn`` after ``delay`` s; one countdown per ``key``, and the earlier deadline wins.

        Why the earlier one: a ``stop`` with a long grace followed by ``kill_command`` (5 s), or a
        second Ctrl-C, must not be held to the first, longer countdown. True if this call set it."""
        deadline = time.monotonic() + delay
        with self._cond:
            current = self._timers.get(key)
            if current is not None and current[0] <= deadline:
                self.coalesced += 1
                return False
            self._timers[key] = (deadline, fn)
            self._ensure_thread_locked()
            self._cond.notify_all()
            return True

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._timers)

    def _ensure_thread_locked(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        thread = threading.Thread(target=self._loop, name="control", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # e.g. a task limit: the request stays queued, the next retries
            _log.error("control_thread_start_failed", error=str(exc), pending=len(self._queue))
            self._thread = None
            return
        self._thread = thread

    def _next_locked(self) -> Callable[[], None] | None:
        now = time.monotonic()
        due = [key for key, (deadline, _) in self._timers.items() if deadline <= now]
        if due:
            return self._timers.pop(due[0])[1]
        if self._queue:
            key, fn = self._queue.popleft()
            self._keys.discard(key)
            return fn
        return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                fn = self._next_locked()
                while fn is None:
                    wait = min((d for d, _ in self._timers.values()), default=time.monotonic() + IDLE_WAIT)
                    self._cond.wait(max(0.0, wait - time.monotonic()))
                    fn = self._next_locked()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - one failing request must not end the worker
                _log.error("control_request_failed", error=f"{type(exc).__name__}: {exc}"[:300])

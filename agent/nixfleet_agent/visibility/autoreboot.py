"""The optional automatic reboot (``reboot.allow``): only when a reboot is needed, only inside the
local-time window, after a randomized delay, never while a command runs, announced first.

Why one thread that sleeps on an Event instead of a polling loop: an idle agent must cost nothing.
:meth:`AutoReboot.step` decides and returns how long nothing can change (until the window opens,
until the planned moment, an hour while no reboot is needed); the thread sleeps exactly that and is
woken early by :meth:`poke` (the needs-reboot verdict changed) or :meth:`stop`. The only repeated
wait shorter than an hour is the one-minute re-check while a command holds the slot
(or the dashboard is not connected: the reboot is announced there first). Clock and
randomness are injected, so tests drive ``step`` with any time of day and never sleep.

The reboot itself is the ``reboot`` command's path (``commands.control.reboot``: the root unit on
NixOS, ``sudo -n`` elsewhere), run inside the one-command slot so no command can start meanwhile.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import log
from .needsreboot import RebootState
from .settings import Settings

_log = log.get("autoreboot")

IDLE_WAIT = 3600.0  # nothing to do: look again in an hour (or when poked)
BUSY_WAIT = 60.0  # a command runs: look again in a minute
AFTER_FIRE_WAIT = 3600.0  # a reboot was started (or failed): never a second one within the hour
DAY = 86400


@dataclass(frozen=True)
class Window:
    """A local-time window in minutes after midnight; ``lower > upper`` spans midnight and
    ``lower == upper`` is the whole day."""

    lower: int
    upper: int

    def contains(self, sod: float) -> bool:
        lo, up = self.lower * 60, self.upper * 60
        if lo == up:
            return True
        if lo < up:
            return lo <= sod < up
        return sod >= lo or sod < up

    def until_open(self, sod: float) -> float:
        """Seconds until the window opens (0 inside it)."""
        return 0.0 if self.contains(sod) else (self.lower * 60 - sod) % DAY

    def until_close(self, sod: float) -> float:
        """Seconds until the window closes (a full day for the whole-day window)."""
        if self.lower == self.upper:
            return float(DAY)
        return (self.upper * 60 - sod) % DAY if self.contains(sod) else 0.0


def seconds_of_day(epoch: float, localtime: Callable[[float], time.struct_time] = time.localtime) -> float:
    lt = localtime(epoch)
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (epoch % 1)


class AutoReboot:
    """``busy()`` names why not now ("a command is running", "dashboard not connected": the
    announcement must be seen) or returns "". ``fire(reason)`` starts the reboot in the command
    slot and returns False when the slot was taken meanwhile (then it counts as busy)."""

    def __init__(
        self,
        settings: Settings,
        needs: Callable[[], RebootState],
        busy: Callable[[], str],
        fire: Callable[[str], bool],
        *,
        clock: Callable[[], float] = time.time,
        localtime: Callable[[float], time.struct_time] = time.localtime,
        rng: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ) -> None:
        self.window = Window(settings.window_lower, settings.window_upper)
        self.window_text = settings.window_text
        self.delay = float(settings.randomized_delay_sec)
        self.needs, self.busy, self.fire = needs, busy, fire
        self.clock, self.localtime, self.rng = clock, localtime, rng
        self.planned: float | None = None  # epoch of the planned reboot, inside the current window
        self.quiet_until = 0.0
        self._agent_stop = stop or threading.Event()  # the agent's: read, never set here
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> float:
        """Decide once; return the seconds until something can change."""
        now = self.clock()
        state = self.needs()
        if not state.needed:
            self.planned = None
            return IDLE_WAIT
        if now < self.quiet_until:
            return self.quiet_until - now
        sod = seconds_of_day(now, self.localtime)
        if not self.window.contains(sod):
            self.planned = None
            return min(max(self.window.until_open(sod), 1.0), IDLE_WAIT)
        if self.planned is None:
            # inside the window, never beyond its end: a late delay waits for the next window
            self.planned = now + self.rng() * min(self.delay, max(self.window.until_close(sod) - 1.0, 0.0))
            _log.info("reboot_planned", at=time.strftime("%Y-%m-%dT%H:%M:%S%z", self.localtime(self.planned)),
                      window=self.window_text, reasons=",".join(state.reasons))
        if now < self.planned:
            return min(self.planned - now, IDLE_WAIT)
        why_not = self.busy()
        if why_not:
            _log.info("reboot_deferred", reason=why_not)
            return BUSY_WAIT
        reason = (f"needs reboot ({', '.join(state.reasons) or 'unknown'}); "
                  f"inside the reboot window {self.window_text}")
        if not self.fire(reason):
            return BUSY_WAIT
        self.planned = None
        self.quiet_until = now + AFTER_FIRE_WAIT
        return AFTER_FIRE_WAIT

    # ----- the thread ------------------------------------------------------------------------------

    def poke(self) -> None:
        """The needs-reboot verdict (or something else step reads) changed: decide again now."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="auto-reboot", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not (self._halt.is_set() or self._agent_stop.is_set()):
            try:
                wait = self.step()
            except Exception as exc:  # noqa: BLE001 - a bug here must not end the agent
                _log.error("autoreboot_failed", error=repr(exc)[:300])
                wait = IDLE_WAIT
            self._wake.wait(wait)
            self._wake.clear()

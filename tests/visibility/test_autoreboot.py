"""The automatic reboot's decisions, driven with an injected clock and randomness (``step`` is
the whole decision; the thread only sleeps what it returns), so nothing here sleeps."""

from __future__ import annotations

import threading
import time

import pytest

from nixfleet_agent.visibility.autoreboot import BUSY_WAIT, IDLE_WAIT, AutoReboot, Window
from nixfleet_agent.visibility.needsreboot import RebootState
from nixfleet_agent.visibility.settings import Settings, parse_time

DAY0 = 1_700_006_400  # a UTC midnight (2023-11-15T00:00:00Z); local time = UTC below (gmtime)
NEEDED = RebootState(True, True, ("kernel",))
NOT_NEEDED = RebootState(True, False, ())


def at(hhmm: str, day: int = 0) -> float:
    minutes = parse_time(hhmm)
    assert minutes is not None
    return DAY0 + day * 86400 + minutes * 60


class Host:
    """Clock, needs-reboot verdict, busy flag and the reboot path, all under the test's control."""

    def __init__(self, lower: str, upper: str, delay: int = 0, rng: float = 0.0) -> None:
        self.now = at("12:00")
        self.state = NEEDED
        self.busy = False
        self.slot_taken = False
        self.fired: list[tuple[float, str]] = []
        lo, up = parse_time(lower), parse_time(upper)
        assert lo is not None and up is not None
        settings = Settings(reboot_allow=True, window_lower=lo, window_upper=up, randomized_delay_sec=delay)
        self.auto = AutoReboot(settings, lambda: self.state, lambda: "a command is running" if self.busy else "",
                               self._fire,
                               clock=lambda: self.now, localtime=time.gmtime, rng=lambda: rng)

    def _fire(self, reason: str) -> bool:
        if self.slot_taken:
            return False
        self.fired.append((self.now, reason))
        return True

    def run_until(self, end: float) -> list[float]:
        """Follow the timer as the thread would: step, then jump the clock by the returned wait."""
        wakes = []
        while self.now < end and not self.fired:
            wait = self.auto.step()
            assert wait > 0
            wakes.append(wait)
            self.now += wait
        return wakes


@pytest.mark.parametrize(("lower", "upper", "inside", "outside"), [
    ("01:00", "05:00", ["01:00", "04:59"], ["00:59", "05:00", "12:00"]),
    ("23:00", "02:00", ["23:00", "23:59", "00:00", "01:59"], ["02:00", "22:59", "12:00"]),  # over midnight
    ("03:00", "03:00", ["00:00", "03:00", "23:59"], []),  # equal bounds: the whole day
])
def test_window_membership(lower: str, upper: str, inside: list[str], outside: list[str]) -> None:
    lo, up = parse_time(lower), parse_time(upper)
    assert lo is not None and up is not None
    window = Window(lo, up)
    for t in inside:
        assert window.contains(at(t) - DAY0), t
    for t in outside:
        assert not window.contains(at(t) - DAY0), t


def test_reboots_when_the_window_opens_over_midnight() -> None:
    host = Host("23:30", "01:30")
    host.now = at("20:00")
    wakes = host.run_until(at("12:00", day=1))
    assert [t for t, _ in host.fired] == [at("23:30")]
    assert "kernel" in host.fired[0][1] and "23:30-01:30" in host.fired[0][1]
    assert wakes == [3600.0, 3600.0, 3600.0, 1800.0, 3600.0]  # hourly at most, then to the opening


def test_after_midnight_inside_a_window_that_began_yesterday() -> None:
    host = Host("23:30", "01:30")
    host.now = at("00:45", day=1)
    host.run_until(at("12:00", day=1))
    assert [t for t, _ in host.fired] == [at("00:45", day=1)]


def test_not_needed_means_never() -> None:
    host = Host("00:00", "00:00")  # any time
    host.state = NOT_NEEDED
    assert host.auto.step() == IDLE_WAIT
    host.state = RebootState(False, None, ())  # macOS / Home Manager
    assert host.auto.step() == IDLE_WAIT
    assert host.fired == []


def test_never_while_a_command_runs() -> None:
    host = Host("02:00", "04:00")
    host.now = at("02:10")
    host.busy = True
    for _ in range(30):  # half an hour of a long switch: re-checked once a minute, never fired
        assert host.auto.step() == BUSY_WAIT
        host.now += BUSY_WAIT
    assert host.fired == []
    host.busy = False
    host.auto.step()
    assert [t for t, _ in host.fired] == [at("02:40")]


def test_a_command_that_takes_the_slot_first_defers_it() -> None:
    host = Host("02:00", "04:00")
    host.now = at("02:00")
    host.slot_taken = True  # not busy when asked, but the slot was taken before the reboot claimed it
    assert host.auto.step() == BUSY_WAIT and host.fired == []
    host.slot_taken = False
    host.now += BUSY_WAIT
    host.auto.step()
    assert len(host.fired) == 1


def test_randomized_delay_stays_inside_the_window() -> None:
    host = Host("02:00", "03:00", delay=7200, rng=0.5)  # half of 2 h would be 03:00, past the end
    host.now = at("02:00")
    host.run_until(at("12:00"))
    (when, _), = host.fired
    assert at("02:29") <= when < at("03:00")  # half of the time left in the window
    host2 = Host("02:00", "06:00", delay=3600, rng=0.25)
    host2.now = at("02:00")
    host2.run_until(at("12:00"))
    assert host2.fired[0][0] == at("02:15")


def test_plan_is_dropped_when_the_window_closes() -> None:
    host = Host("02:00", "03:00", delay=3000, rng=0.9)
    host.now = at("02:00")
    assert host.auto.step() == pytest.approx(0.9 * 3000)
    host.busy = True
    host.now = at("02:59")
    assert host.auto.step() == BUSY_WAIT
    host.now = at("03:00")  # closed before the command ended: wait for the next window
    assert host.auto.step() == IDLE_WAIT  # capped at an hour (a clock change or DST is seen)
    assert host.auto.planned is None and host.fired == []


def test_one_attempt_per_hour_at_most() -> None:
    host = Host("00:00", "00:00")
    host.now = at("02:00")
    host.auto.step()
    assert len(host.fired) == 1
    host.now += 60  # the reboot did not happen (failed): no retry every minute
    host.auto.step()
    assert len(host.fired) == 1


def test_thread_stops_and_poke_wakes_it() -> None:
    """The real timer thread: started, woken by poke (verdict changed), ended by stop."""
    stop = threading.Event()
    decided = threading.Event()
    calls = []

    def needs() -> RebootState:
        calls.append(1)
        decided.set()
        return NOT_NEEDED

    settings = Settings(reboot_allow=True)
    auto = AutoReboot(settings, needs, lambda: "", lambda reason: True, stop=stop)
    auto.start()
    assert decided.wait(10)
    decided.clear()
    auto.poke()
    assert decided.wait(10) and len(calls) >= 2
    auto.stop()
    auto.join(10)
    assert auto._thread is not None and not auto._thread.is_alive()

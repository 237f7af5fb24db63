"""Reading a process's memory and CPU from /proc, the same numbers an operator sees in top/systemd.

VmRSS/VmHWM come from /proc/<pid>/status (KiB). CPU comes from utime+stime in /proc/<pid>/stat
(clock ticks, 10 ms on most kernels: coarse for a 60 s idle window, so the per-thread schedstat
run time in nanoseconds is read as well and reported next to it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Self

TICK = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    """One ``Vm*`` field of /proc/<pid>/status in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


def hwm_kib(pid: int) -> int:
    return status_kib(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (threads included, dead threads too), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def ticks_with_children(pid: int) -> int:
    """utime + stime + cutime + cstime in clock ticks: the agent's CPU plus that of every child it
    started and reaped (a ``git`` per heartbeat shows up here, not in cpu_seconds)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2:].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14))  # fields 14-17 of stat(5)


def run_ns(pid: int) -> int:
    """Nanoseconds on CPU summed over live threads (/proc/<pid>/task/*/schedstat, first field)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def threads(pid: int) -> int:
    return status_kib(pid, "Threads")


@dataclass
class RssSampler:
    """Samples VmRSS every ``period`` seconds on a background thread; keeps only the peak."""

    pid: int
    period: float = 0.02
    peak_kib: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        self._sample()

    def _sample(self) -> None:
        value = rss_kib(self.pid)
        self.samples += 1
        self.peak_kib = max(self.peak_kib, value)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

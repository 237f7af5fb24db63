"""Host load figures for the dashboard (CPU %, RAM %, swap %, 1-minute load), no third-party library.

Linux reads ``/proc``; macOS asks ``sysctl`` and ``vm_stat``. CPU is the busy share since the
previous sample (the first sample uses the counters since boot). Any failure yields ``None`` so the
dashboard shows "no metrics" instead of a wrong number.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


class Metrics:
    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._last_cpu: tuple[int, int] | None = None
        self._memsize: int | None = None

    def sample(self) -> dict[str, float] | None:
        try:
            if platform.system() == "Darwin":
                values = self._darwin()
            else:
                values = self._linux()
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None
        return {key: round(max(0.0, value), 1) for key, value in values.items()}

    def _linux(self) -> dict[str, float]:
        fields = (self._proc / "stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        total = sum(ticks[:8])
        cpu = self._cpu_share(total, idle)
        mem: dict[str, int] = {}
        for line in (self._proc / "meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                mem[name] = int(parts[0])
        total_mem = mem["MemTotal"]
        available = mem.get("MemAvailable", mem.get("MemFree", 0))
        ram = 100.0 * (total_mem - available) / total_mem if total_mem else 0.0
        swap_total = mem.get("SwapTotal", 0)
        swap = 100.0 * (swap_total - mem.get("SwapFree", 0)) / swap_total if swap_total else 0.0
        load = float((self._proc / "loadavg").read_text().split()[0])
        return {"cpu": cpu, "ram": ram, "swap": swap, "load": load}

    def _cpu_share(self, total: int, idle: int) -> float:
        previous = self._last_cpu
        self._last_cpu = (total, idle)
        if previous is not None and total > previous[0]:
            total, idle = total - previous[0], idle - previous[1]
        return 100.0 * (total - idle) / total if total else 0.0

    def _darwin(self) -> dict[str, float]:
        def sysctl(name: str) -> str:
            return subprocess.run(
                ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=True
            ).stdout.strip()

        if self._memsize is None:  # constant: one sysctl per agent, not per heartbeat
            self._memsize = int(sysctl("hw.memsize"))
        memsize = self._memsize
        vm = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=True).stdout
        page_size = 4096
        pages: dict[str, int] = {}
        for line in vm.splitlines():
            if "page size of" in line:
                page_size = int(line.split("page size of")[1].split()[0])
                continue
            name, _, value = line.partition(":")
            value = value.strip().rstrip(".")
            if value.isdigit():
                pages[name.strip()] = int(value)
        used = (pages.get("Pages active", 0) + pages.get("Pages wired down", 0)
                + pages.get("Pages occupied by compressor", 0)) * page_size
        ram = 100.0 * used / memsize if memsize else 0.0
        swap_text = sysctl("vm.swapusage")  # "total = 2048.00M  used = 1024.00M  free = ..."
        numbers = [float(tok.rstrip("MG")) for tok in swap_text.replace("=", " ").split() if tok[:1].isdigit()]
        swap = 100.0 * numbers[1] / numbers[0] if len(numbers) >= 2 and numbers[0] else 0.0
        load = os.getloadavg()[0]
        ps = subprocess.run(["ps", "-A", "-o", "%cpu="], capture_output=True, text=True, timeout=5, check=True).stdout
        cpu = sum(float(x) for x in ps.split()) / (os.cpu_count() or 1)
        return {"cpu": min(cpu, 100.0), "ram": ram, "swap": swap, "load": load}

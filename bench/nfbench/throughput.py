"""Output throughput: a command printing 200,000 lines of 80 characters, end to end.

Every line must arrive at the dashboard, in order, exactly once. Time runs from the dashboard
sending ``test`` to the dashboard receiving the last line. The agent's RSS is sampled every 20 ms
(and VmHWM read at the end) because the target is about the whole run, not the idle state.

Two reference points separate the agent's cost from everything around it:

* ``floor``: a client with no agent code (websocket-client, one ``json.dumps`` + ``send`` per
  line, the agent's message shape) sending the same lines to the same dashboard - the ceiling of
  any one-frame-per-line Python sender against this dashboard on this machine.
* ``runner``: ``runner.run`` alone, in-process, on pipes and on a pty, with a sink that only counts
  lines - the cost of reading and splitting the child's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from . import dashboards, procfs
from . import harness as h
from .stats import Figures

LINE_RE = re.compile(r"^(\d{8}) ")
FLOOR_CLIENT = Path(__file__).resolve().parent / "floor_client.py"


def check_lines(records: list[h.Record], n: int) -> str:
    """'' if the child's lines are all there in order, else what is wrong."""
    numbers = []
    for record in records:
        match = LINE_RE.match(str(record.payload.get("line", "")))
        if match:
            numbers.append(int(match.group(1)))
    if numbers == list(range(n)):
        return ""
    missing = n - len(set(numbers))
    first_bad = next((i for i, v in enumerate(numbers) if v != i), len(numbers))
    return f"{len(numbers)} lines received, {missing} missing, first out of order at index {first_bad}"


def run_agent_throughput(figs: Figures, ws: h.Workspace, runs: int, lines: int) -> None:
    ws.set_lines(lines)
    for mode in ("pipes", "pty"):
        rate = figs.get(f"tput_{mode}", f"{lines:,} lines end to end ({mode})", "lines/s", 20000,
                        higher_is_better=True, note="stretch target 50,000 lines/s")
        peak = figs.get(f"tput_rss_peak_{mode}", f"agent RSS peak during the run ({mode}, 20 ms samples)",
                        "MiB", 40)
        hwm = figs.get(f"tput_hwm_{mode}", f"agent VmHWM after the run ({mode})", "MiB", 40)
        agent_cpu = figs.get(f"tput_agent_cpu_{mode}", f"agent CPU during the run ({mode})", "% core")
        per_line = figs.get(f"tput_cpu_per_line_{mode}", f"agent CPU per line ({mode})", "µs")
        dash_cpu = figs.get(f"tput_dash_cpu_{mode}", f"dashboard (bench process) CPU during the run ({mode})",
                            "% core")
        for n in range(runs):
            dash = dashboards.new_dashboard()
            try:
                with h.running_agent(dash, ws, pty=mode == "pty") as agent:
                    time.sleep(0.3)
                    mark = dash.mark()
                    c0, d0 = procfs.cpu_seconds(agent.pid), _own_cpu()
                    t0 = time.monotonic()
                    done = dash.watch.expect(lambda r: r.type == "status")
                    with procfs.RssSampler(agent.pid, period=0.02) as sampler:
                        dash.send_command(h.HOST, "test")
                        done.wait("status", timeout=600)
                    c1, d1 = procfs.cpu_seconds(agent.pid), _own_cpu()
                    outputs = dash.messages("output", h.HOST, since=mark)
                    child = [r for r in outputs if LINE_RE.match(str(r.payload.get("line", "")))]
                    problem = check_lines(outputs, lines)
                    if problem:
                        raise RuntimeError(f"{mode}: output lost or reordered: {problem}")
                    elapsed = child[-1].t - t0
                    rate.add(lines / elapsed)
                    peak.add(sampler.peak_kib / 1024)
                    hwm.add(procfs.hwm_kib(agent.pid) / 1024)
                    agent_cpu.add(100 * (c1 - c0) / elapsed)
                    per_line.add(1e6 * (c1 - c0) / lines)
                    dash_cpu.add(100 * (d1 - d0) / elapsed)
            finally:
                dash.close()
            print(f"  throughput {mode} run {n + 1}/{runs}: {rate.samples[-1]:,.0f} lines/s, "
                  f"peak RSS {peak.samples[-1]:.1f} MiB, agent CPU {agent_cpu.samples[-1]:.0f} %", flush=True)


def run_floor(figs: Figures, runs: int, lines: int) -> None:
    rate = figs.get("tput_floor", f"{lines:,} lines, bare websocket-client sender, no agent (reference)",
                    "lines/s")
    last = f"{lines - 1:08d} "
    for _ in range(runs):
        dash = dashboards.new_dashboard()
        try:
            mark = dash.mark()
            done = dash.watch.expect(lambda r: r.type == "output" and str(r.payload.get("line", "")).startswith(last))
            proc = subprocess.Popen([sys.executable, str(FLOOR_CLIENT), dash.url, h.TOKEN, h.HOST, str(lines)],
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            t0 = float(proc.stdout.readline())  # the client's monotonic clock = ours (same host)
            done.wait("last line", timeout=600)
            proc.wait(30)
            outputs = dash.messages("output", since=mark)
            problem = check_lines(outputs, lines)
            if problem:
                raise RuntimeError(f"floor client: {problem}")
            rate.add(lines / (outputs[-1].t - t0))
        finally:
            dash.close()
    print(f"  floor (no agent): {rate.median:,.0f} lines/s", flush=True)


def run_runner_only(figs: Figures, runs: int, lines: int) -> None:
    """The runner on its own: child → pipe/pty → split → a sink that counts."""
    from nixfleet_agent.ops import runner

    class Count:
        n = 0

        def output(self, command: str, line: str, stream: str = "stdout") -> None:
            self.n += 1

    for mode in ("pipes", "pty"):
        rate = figs.get(f"runner_{mode}", f"runner.run alone, counting sink ({mode})", "lines/s")
        for _ in range(runs):
            sink = Count()
            t0 = time.monotonic()
            result = runner.run([sys.executable, str(h.EMITTER), str(lines)], command="bench", reporter=sink,
                                mode=mode)  # type: ignore[arg-type]
            elapsed = time.monotonic() - t0
            if sink.n != lines or result.exit_code != 0:
                raise RuntimeError(f"runner {mode}: {sink.n} lines, exit {result.exit_code}")
            rate.add(lines / elapsed)
    child = figs.get("emitter_alone", "the emitting child alone, into /dev/null", "lines/s")
    for _ in range(runs):
        t0 = time.monotonic()
        with open(os.devnull, "wb") as null:
            subprocess.run([sys.executable, str(h.EMITTER), str(lines)], stdout=null, check=True)
        child.add(lines / (time.monotonic() - t0))


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system

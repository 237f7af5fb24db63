"""Idle footprint (memory, CPU) of a registered agent, the interpreter baselines it is built on,
and - on the same long-registered agent - recovery from a dashboard restart.

Reconnect is measured at the end of each idle window because the agent then has been registered
for a minute, as in production: a session younger than ``connection.STABLE_AFTER`` keeps its
backoff and would measure a different thing.
"""

from __future__ import annotations

import subprocess
import time

from . import harness as h
from . import procfs
from .stats import Figures

BLOCK_TLS = "import sys\nfor m in ('ssl', '_ssl', '_hashlib'): sys.modules[m] = None\n"  # as cli does for ws://
AGENT_IMPORTS = ("import nixfleet_agent.cli, nixfleet_agent.agent, nixfleet_agent.connection, "
                 "nixfleet_agent.dispatcher, nixfleet_agent.commands.registry")
BASELINES = {
    "baseline_python": ("bare python interpreter", "import sys"),
    "baseline_websocket": ("python + import websocket", "import websocket"),
    "baseline_websocket_notls": ("python + import websocket, OpenSSL blocked (ws://)", BLOCK_TLS + "import websocket"),
    "baseline_agent_imports": ("python + all agent modules imported, OpenSSL blocked", BLOCK_TLS + AGENT_IMPORTS),
}


def baseline_kib(code: str) -> tuple[int, int]:
    """(VmRSS, RssAnon) of the interpreter once it has run ``code`` and sits waiting on stdin."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": h.python_path(), "LANG": "C.UTF-8"}
    proc = subprocess.Popen([*h.python_argv(), "-c", f"{code}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"baseline failed to start: {code!r}")
        time.sleep(0.2)
        return procfs.rss_kib(proc.pid), procfs.status_kib(proc.pid, "RssAnon")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def run_baselines(figs: Figures, runs: int) -> None:
    for key, (label, code) in BASELINES.items():
        fig = figs.get(key, f"RSS {label}", "MiB")
        anon = figs.get(key + "_anon", f"  of which RssAnon", "MiB")
        for _ in range(runs):
            rss, rss_anon = baseline_kib(code)
            fig.add(rss / 1024)
            anon.add(rss_anon / 1024)


def run_idle(figs: Figures, ws: h.Workspace, runs: int, window: float, down_for: float,
             tls: h.TlsFiles | None = None) -> None:
    scheme = "wss" if tls else "ws"
    w = f"{window:.0f} s"
    rss = figs.get(f"idle_rss_{scheme}", f"idle RSS, registered, {scheme}://, end of {w}", "MiB", 22)
    anon = figs.get(f"idle_rss_anon_{scheme}", f"  of which RssAnon ({scheme}://)", "MiB")
    peak = figs.get(f"idle_rss_peak_{scheme}", f"idle RSS peak in the {w} ({scheme}://, 2 samples/s)", "MiB")
    hwm = figs.get(f"idle_hwm_{scheme}", f"VmHWM since start, clone included ({scheme}://)", "MiB")
    cpu = figs.get(f"idle_cpu_{scheme}", f"idle CPU over {w}, utime+stime ({scheme}://)", "% core", 0.1)
    cpu_ns = figs.get(f"idle_cpu_sched_{scheme}", f"idle CPU over {w}, schedstat ns ({scheme}://)", "% core")
    beats = figs.get(f"idle_heartbeats_{scheme}", f"heartbeats received in the {w} ({scheme}://)", "count")
    threads = figs.get(f"idle_threads_{scheme}", f"agent threads when idle ({scheme}://)", "count")
    rec_reg = figs.get(f"reconnect_register_{scheme}",
                       f"dashboard back → register received ({down_for:.0f} s outage, {scheme}://)", "ms")
    rec_ack = figs.get(f"reconnect_registered_{scheme}",
                       f"dashboard back → agent registered ({down_for:.0f} s outage, {scheme}://)", "ms", 2000)
    extra = {"NIXFLEET_CA_FILE": str(tls.cert)} if tls else {}
    dash = h.new_dashboard(tls)
    try:
        for n in range(runs):
            with h.running_agent(dash, ws, **extra) as agent:
                # the window starts at the first heartbeat, so startup work is not counted as idle
                h.wait_record(dash, "heartbeat", since=agent.dash_mark, timeout=15)
                mark = dash.mark()
                c0, n0, t0 = procfs.cpu_seconds(agent.pid), procfs.run_ns(agent.pid), time.monotonic()
                with procfs.RssSampler(agent.pid, period=0.5) as sampler:
                    time.sleep(window)
                c1, n1, t1 = procfs.cpu_seconds(agent.pid), procfs.run_ns(agent.pid), time.monotonic()
                rss.add(procfs.rss_kib(agent.pid) / 1024)
                anon.add(procfs.status_kib(agent.pid, "RssAnon") / 1024)
                peak.add(sampler.peak_kib / 1024)
                hwm.add(procfs.hwm_kib(agent.pid) / 1024)
                cpu.add(100 * (c1 - c0) / (t1 - t0))
                cpu_ns.add(100 * (n1 - n0) / 1e9 / (t1 - t0))
                beats.add(len(dash.messages("heartbeat", since=mark)))
                threads.add(procfs.threads(agent.pid))
                # recovery: crash the dashboard (no close frame), bring it back on the same port
                log_mark, rec_mark = agent.mark(), dash.mark()
                dash.stop()
                time.sleep(down_for)
                dash.start()
                back = time.monotonic()
                reg = h.wait_record(dash, "register", since=rec_mark, timeout=90)
                ack = agent.wait_log("event=registered", since=log_mark, timeout=90)
                rec_reg.add(1000 * (reg.t - back))
                rec_ack.add(1000 * (ack.t - back))
            print(f"  idle {scheme}:// run {n + 1}/{runs}: rss {rss.samples[-1]:.1f} MiB, cpu {cpu_ns.samples[-1]:.3f} %,"
                  f" reconnect {rec_ack.samples[-1]:.0f} ms (load {h.loadavg():.1f})", flush=True)
    finally:
        dash.close()

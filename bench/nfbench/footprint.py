"""Idle footprint (memory, CPU) of a registered agent, the interpreter baselines it is built on,
and - on the same long-registered agent - recovery from a dashboard restart.

Reconnect is measured at the end of each idle window because the agent then has been registered
for a minute, as in production: a session younger than ``connection.STABLE_AFTER`` keeps its
backoff and would measure a different thing.
"""

from __future__ import annotations

import contextlib
import subprocess
import time

from . import dashboards, procfs
from . import harness as h
from .stats import Figures

BLOCK_TLS = "import sys\nfor m in ('ssl', '_ssl', '_hashlib'): sys.modules[m] = None\n"  # as cli does for ws://
AGENT_IMPORTS = ("import nixfleet_agent.cli, nixfleet_agent.agent, nixfleet_agent.link.session, "
                 "nixfleet_agent.dispatcher, nixfleet_agent.commands.registry")
BASELINES = {
    "baseline_python": ("bare python interpreter", "import sys"),
    "baseline_websocket": ("python + import websocket", "import websocket"),
    "baseline_websocket_notls": ("python + import websocket, OpenSSL blocked (ws://)", BLOCK_TLS + "import websocket"),
    "baseline_websocket_castore": ("python + import websocket + a TLS context with the system CA store",
                                   "import websocket, ssl\nc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\nc.load_default_certs()"),
    "baseline_stdlib_tls": ("python + socket, ssl, hashlib, base64, struct, selectors, threading, json",
                            "import socket, ssl, hashlib, base64, struct, selectors, threading, json"),
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
        anon = figs.get(key + "_anon", "  of which RssAnon", "MiB")
        for _ in range(runs):
            rss, rss_anon = baseline_kib(code)
            fig.add(rss / 1024)
            anon.add(rss_anon / 1024)


class _Scheme:
    """One idle agent: its figures, its dashboard, its CPU counters at the window's start."""

    def __init__(self, figs: Figures, ws: h.Workspace, window: float, down_for: float, tls: dashboards.TlsFiles | None) -> None:
        s = self.scheme = "wss" if tls else "ws"
        w = f"{window:.0f} s"
        self.ws, self.tls = ws, tls
        self.rss = figs.get(f"idle_rss_{s}", f"idle RSS, registered, {s}://, end of {w}", "MiB", 22)
        self.anon = figs.get(f"idle_rss_anon_{s}", f"  of which RssAnon ({s}://)", "MiB")
        self.peak = figs.get(f"idle_rss_peak_{s}", f"idle RSS peak in the {w} ({s}://, 2 samples/s)", "MiB")
        self.hwm = figs.get(f"idle_hwm_{s}", f"VmHWM since start, clone included ({s}://)", "MiB")
        self.cpu = figs.get(f"idle_cpu_{s}", f"idle CPU over {w}, utime+stime ({s}://)", "% core", 0.1)
        self.cpu_ns = figs.get(f"idle_cpu_sched_{s}", f"idle CPU over {w}, schedstat ns ({s}://)", "% core")
        self.ticks = figs.get(f"idle_ticks_30s_{s}",
                              f"idle CPU ticks per 30 s, agent + children ({s}://; upstream Go agent: 0)", "ticks", 1)
        self.beats = figs.get(f"idle_heartbeats_{s}", f"heartbeats received in the {w} ({s}://)", "count")
        self.threads = figs.get(f"idle_threads_{s}", f"agent threads when idle ({s}://)", "count")
        self.rec_reg = figs.get(f"reconnect_register_{s}",
                                f"dashboard back → register received ({down_for:.0f} s outage, {s}://)", "ms")
        self.rec_ack = figs.get(f"reconnect_registered_{s}",
                                f"dashboard back → agent registered ({down_for:.0f} s outage, {s}://)", "ms", 2000)
        self.down_for = down_for
        self.dash = dashboards.new_dashboard(tls)

    def agent(self) -> contextlib.AbstractContextManager[h.Agent]:
        extra = self.tls.agent_env() if self.tls else {}
        return h.running_agent(self.dash, self.ws, env=extra)

    def begin(self, agent: h.Agent) -> None:
        # the window starts at the first heartbeat, so startup work is not counted as idle
        h.wait_record(self.dash, "heartbeat", since=agent.dash_mark, timeout=15)
        self.mark = self.dash.mark()
        self.c0, self.n0, self.t0 = procfs.cpu_seconds(agent.pid), procfs.run_ns(agent.pid), time.monotonic()
        self.k0 = procfs.ticks_with_children(agent.pid)
        self.sampler = procfs.RssSampler(agent.pid, period=0.5).__enter__()

    def end(self, agent: h.Agent) -> None:
        c1, n1, t1 = procfs.cpu_seconds(agent.pid), procfs.run_ns(agent.pid), time.monotonic()
        k1 = procfs.ticks_with_children(agent.pid)
        self.sampler.__exit__()
        self.rss.add(procfs.rss_kib(agent.pid) / 1024)
        self.anon.add(procfs.status_kib(agent.pid, "RssAnon") / 1024)
        self.peak.add(self.sampler.peak_kib / 1024)
        self.hwm.add(procfs.hwm_kib(agent.pid) / 1024)
        self.cpu.add(100 * (c1 - self.c0) / (t1 - self.t0))
        self.cpu_ns.add(100 * (n1 - self.n0) / 1e9 / (t1 - self.t0))
        self.ticks.add((k1 - self.k0) * 30.0 / (t1 - self.t0))
        self.beats.add(len(self.dash.messages("heartbeat", since=self.mark)))
        self.threads.add(procfs.threads(agent.pid))

    def reconnect(self, agent: h.Agent) -> None:
        """Crash the dashboard (no close frame), bring it back on the same port, time the way back."""
        log_mark, rec_mark = agent.mark(), self.dash.mark()
        self.dash.stop()
        time.sleep(self.down_for)
        self.dash.start()
        back = time.monotonic()
        reg = h.wait_record(self.dash, "register", since=rec_mark, timeout=90)
        ack = agent.wait_log("event=registered", since=log_mark, timeout=90)
        self.rec_reg.add(1000 * (reg.t - back))
        self.rec_ack.add(1000 * (ack.t - back))

    def summary(self) -> str:
        return (f"{self.scheme}:// rss {self.rss.samples[-1]:.1f} MiB, cpu {self.cpu_ns.samples[-1]:.3f} %, "
                f"reconnect {self.rec_ack.samples[-1]:.0f} ms")


def run_idle(figs: Figures, ws: h.Workspace, runs: int, window: float, down_for: float,
             tls: dashboards.TlsFiles | None) -> None:
    """ws:// and (with a certificate) wss:// agents idle side by side, each on its own dashboard."""
    schemes = [_Scheme(figs, ws, window, down_for, None)]
    if tls is not None:
        schemes.append(_Scheme(figs, ws, window, down_for, tls))
    try:
        for n in range(runs):
            with contextlib.ExitStack() as stack:
                agents = [stack.enter_context(s.agent()) for s in schemes]
                for scheme, agent in zip(schemes, agents):
                    scheme.begin(agent)
                time.sleep(window)
                for scheme, agent in zip(schemes, agents):
                    scheme.end(agent)
                for scheme, agent in zip(schemes, agents):
                    scheme.reconnect(agent)
            print(f"  idle run {n + 1}/{runs}: " + "; ".join(s.summary() for s in schemes)
                  + f" (load {h.loadavg():.1f})", flush=True)
    finally:
        for scheme in schemes:
            scheme.dash.close()

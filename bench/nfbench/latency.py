"""Start-up time and command round trips.

Start-up is spawn → ``register`` frame at the dashboard and spawn → the agent's ``registered`` log
line, both on this process's monotonic clock. "First start" clones the fleet repo; "restart" finds
its clone in place (what a service restart or a reboot looks like).

Command latency uses ``test`` on a host script that echoes one line at once: the dashboard stamps
the command just before sending it and every ``output`` frame as it arrives. The first frame is the
agent's own ``▶ [1/1] bench.sh`` line; the script's line needs a fork+exec of /bin/sh on top.
"""

from __future__ import annotations

import time

from . import dashboards
from . import harness as h
from .stats import Figures

FIRST_LINE = "bench first line"


def run_startup(figs: Figures, ws: h.Workspace, runs: int) -> None:
    cold_reg = figs.get("start_register_cold", "spawn → register received, first start (clones repo)", "ms")
    cold_ack = figs.get("start_registered_cold", "spawn → agent got registered, first start (clones repo)", "ms")
    warm_reg = figs.get("start_register", "spawn → register received, restart (clone present)", "ms")
    warm_ack = figs.get("start_registered", "spawn → agent got registered, restart (clone present)", "ms", 300)
    boot = figs.get("start_logged", "  of which spawn → 'starting' logged (interpreter, imports, config)", "ms")
    prep = figs.get("start_prepared", "  of which 'starting' → 'connected' (clone check, dial, register)", "ms")
    dash = dashboards.new_dashboard()
    try:
        for _ in range(runs):
            state = ws.new_state_dir()
            for reg_fig, ack_fig in ((cold_reg, cold_ack), (warm_reg, warm_ack)):
                with h.running_agent(dash, ws, state_dir=state) as agent:
                    assert agent.register is not None and agent.registered is not None
                    reg_fig.add(1000 * (agent.register.t - agent.t_spawn))
                    ack_fig.add(1000 * (agent.registered.t - agent.t_spawn))
                    if ack_fig is warm_ack:
                        starting = agent.wait_log("event=starting")
                        connected = agent.wait_log("event=connected")
                        boot.add(1000 * (starting.t - agent.t_spawn))
                        prep.add(1000 * (connected.t - starting.t))
        print(f"  start-up: restart {warm_ack.median:.0f} ms, first start {cold_ack.median:.0f} ms", flush=True)
    finally:
        dash.close()


def command_round_trips(dash: h.Dashboard, samples: int, first: list[float], child: list[float],
                        total: list[float], mode: str) -> None:
    """``samples`` times: send ``test``, note the first output frame, the script's line, the status."""
    for _ in range(samples):
        mark = dash.mark()
        t0 = time.monotonic()
        dash.send_command(h.HOST, "test")
        status = h.wait_record(dash, "status", since=mark, timeout=30)
        outputs = dash.messages("output", h.HOST, since=mark)
        expected = FIRST_LINE + (" (tty)" if mode == "pty" else " (pipe)")
        line = next((r for r in outputs if str(r.payload.get("line", "")).startswith(FIRST_LINE)), None)
        if line is None or line.payload.get("line") != expected:
            got = line.payload.get("line") if line else "no such line"
            raise RuntimeError(f"{mode}: expected the script to print {expected!r}, got {got!r}")
        first.append(1000 * (outputs[0].t - t0))
        child.append(1000 * (line.t - t0))
        total.append(1000 * (status.t - t0))
        time.sleep(0.05)  # let the worker finish its bookkeeping after the status


def run_command_latency(figs: Figures, ws: h.Workspace, agents: int, samples: int) -> None:
    ws.set_lines(1)
    for mode in ("pipes", "pty"):
        first = figs.get(f"cmd_first_output_{mode}", f"command → first output frame ({mode})", "ms")
        child = figs.get(f"cmd_child_line_{mode}", f"command → the child's first line ({mode})", "ms", 20)
        done = figs.get(f"cmd_status_{mode}", f"command → final status, 1-line test ({mode})", "ms")
        dash = dashboards.new_dashboard()
        try:
            for _ in range(agents):
                with h.running_agent(dash, ws, pty=mode == "pty"):
                    command_round_trips(dash, samples, first.samples, child.samples, done.samples, mode)
        finally:
            dash.close()
        print(f"  command latency ({mode}): first frame {first.median:.1f} ms, child line {child.median:.1f} ms",
              flush=True)

"""Recovery: the dashboard crashes (connections cut, no close frame) and comes back on the same
port after an outage; how long after it is back is the agent registered again?

Each restart happens after the agent has been registered for longer than the connection's
``STABLE_AFTER`` (the point where its reconnect backoff resets), as a long-running agent would be.
Short outages (a quick restart) and longer ones (a redeploy) are measured separately because the
agent's exponential backoff makes the second one slower by design.
"""

from __future__ import annotations

import time

from . import dashboards
from . import harness as h
from .stats import Figures


def stable_after() -> float:
    try:
        from nixfleet_agent.link.session import STABLE_AFTER
    except ImportError:
        return 10.0
    return float(STABLE_AFTER)


def run_recovery(figs: Figures, ws: h.Workspace, outages: tuple[float, ...], samples: int) -> None:
    settle = stable_after() + 0.5
    for down_for in outages:
        fig = figs.get(f"reconnect_{down_for:g}s", f"dashboard back → agent registered ({down_for:g} s outage)",
                       "ms", 2000)
        tries = figs.get(f"reconnect_{down_for:g}s_attempts", f"  dial attempts during the {down_for:g} s outage",
                         "count")
        dash = dashboards.new_dashboard()
        try:
            with h.running_agent(dash, ws) as agent:
                for _ in range(samples):
                    time.sleep(settle)
                    log_mark, rec_mark = agent.mark(), dash.mark()
                    dash.stop()
                    time.sleep(down_for)
                    dash.start()
                    back = time.monotonic()
                    ack = agent.wait_log("event=registered", since=log_mark, timeout=120)
                    h.wait_record(dash, "register", since=rec_mark, timeout=10)
                    fig.add(1000 * (ack.t - back))
                    tries.add(sum(1 for line in agent.lines[log_mark:] if "event=connect_failed" in line.text))
        finally:
            dash.close()
        print(f"  reconnect after {down_for:g} s outage: median {fig.median:.0f} ms "
              f"(max {max(fig.samples):.0f} ms)", flush=True)

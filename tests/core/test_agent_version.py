"""The upstream dashboard's Agent compartment: green for a current agent, and nothing misreported.

The Go dashboard (markus-barta/nixfleet, src/internal/dashboard/handlers.go, state_provider.go) marks
an agent outdated when ``agent_version != "" && agent_version != Version``, ``Version`` being its own
release (the VERSION file, 3.1.5, baked in with ldflags). ``upstream_outdated`` below is that rule,
applied to what the real agent process sends to the reference dashboard.
"""

from __future__ import annotations

import os
from pathlib import Path

from support import AGENT_SRC, run_cli

UPSTREAM_DASHBOARD_VERSION = "3.1.5"  # markus-barta/nixfleet VERSION at the protocol reference's commit


def upstream_outdated(agent_version: str, dashboard_version: str) -> bool:
    """handlers.go:372 / :682 / :915, state_provider.go:106 (whole-string comparison)."""
    return agent_version != "" and agent_version != dashboard_version


def _own_version() -> str:
    return (AGENT_SRC / "nixfleet_agent" / "VERSION").read_text(encoding="utf-8").strip()


def test_a_current_agent_is_current_on_the_upstream_dashboard(dashboard, start_agent):
    start_agent()
    payload = dashboard.wait_message("register", timeout=10).payload
    assert payload["agent_version"] == UPSTREAM_DASHBOARD_VERSION
    assert not upstream_outdated(payload["agent_version"], UPSTREAM_DASHBOARD_VERSION)
    # a dashboard of another release still sees the difference: the level is stated, not echoed
    assert upstream_outdated(payload["agent_version"], "3.2.0")


def test_what_runs_is_reported_truthfully_next_to_it(dashboard, start_agent):
    agent = start_agent()
    payload = dashboard.wait_message("register", timeout=10).payload
    own = _own_version()
    assert payload["implementation"] == "nixfleet-agent-python"
    assert payload["implementation_version"] == own
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(
        p for p in (str(AGENT_SRC), os.environ.get("PYTHONPATH", "")) if p)}
    printed = run_cli(["--version"], env)
    assert printed.returncode == 0
    first, second = printed.stdout.splitlines()[:2]
    assert first == f"nixfleet-agent {own}"
    assert second == f"source_commit {payload['source_commit']}"
    started = agent.wait_event("starting", timeout=10)[0]
    assert started["version"] == own and started["wire_agent_version"] == payload["agent_version"]
    heartbeat = dashboard.wait_message("heartbeat", timeout=10).payload
    assert (heartbeat["source_commit"], heartbeat["store_path"], heartbeat["binary_hash"]) == (
        payload["source_commit"], payload["store_path"], payload["binary_hash"])
    assert Path(payload["store_path"]).exists()  # a real path of the running code

"""The agent registers with the dashboard and then heartbeats on its interval."""

from __future__ import annotations


def test_agent_registers_and_heartbeats(dashboard, start_agent):
    agent = start_agent()
    register = dashboard.wait_message("register", timeout=10)
    assert register.payload["hostname"] == "test-host"
    dashboard.wait_message("heartbeat", host="test-host", timeout=5)
    first = dashboard.mark()
    dashboard.wait_for(lambda: len(dashboard.messages("heartbeat", since=first)) >= 2, timeout=5)
    assert agent.running()

"""Right after a switch the link is not closed at once: the post-switch heartbeat (the new
generation) reaches the dashboard on the same connection, before the agent registers again."""

from __future__ import annotations

HOST = "test-host"


def test_post_switch_heartbeat_arrives_before_the_link_closes(session) -> None:
    session.start()
    regs = session.dash.hosts[HOST].registrations
    mark = session.send("switch")
    status = session.status_of("switch", mark)
    assert status.payload["status"] == "ok"
    session.dash.wait_for(lambda: session.dash.hosts[HOST].registrations > regs, timeout=15)
    same_link = [r for r in session.dash.messages("heartbeat", since=status.index) if r.conn == status.conn]
    assert same_link, "no heartbeat after the switch status on the switch's connection"

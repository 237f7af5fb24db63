"""Bad frames from the dashboard are logged and ignored; the session stays up and keeps working."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inproc import Session
from nixfleet_agent.link import protocol
from support import wait_for

BAD_FRAMES = [
    "this is not json",
    "",
    "[]",
    "null",
    '{"type": 7, "payload": {}}',
    '{"type": "reboot_now", "payload": {}}',
    '{"type": "command"}',
    '{"type": "command", "payload": {"command": 123}}',
    '{"type": "kill_command", "payload": {"signal": "SIGTERM", "pid": "12"}}',
    b"\xff\xfe binary garbage",
    '{"type": "command", "payload": {"command": "' + "x" * 10000 + '"}}',
]


def test_agent_ignores_malformed_frames_and_stays_connected(dashboard, start_agent):
    agent = start_agent()
    dashboard.wait_message("heartbeat", timeout=10)
    for frame in BAD_FRAMES:
        dashboard.send_raw("test-host", frame)
    ignored = agent.wait_event("message_ignored", timeout=5, count=len(BAD_FRAMES))
    reasons = {(e.get("type"), e.get("reason")) for e in ignored}
    assert ("?", "not JSON") in reasons
    assert ("reboot_now", "unknown message type") in reasons
    assert ("command", "payload is not an object") in reasons
    assert ("kill_command", "pid is not a non-negative integer") in reasons
    assert all(len(e.get("sample", "")) <= 120 for e in ignored)  # logged truncated
    mark = dashboard.mark()
    dashboard.wait_for(lambda: len(dashboard.messages("heartbeat", since=mark)) >= 2, timeout=4)
    assert {r.conn for r in dashboard.messages()} == {1}  # never reconnected
    assert "Traceback" not in agent.log()


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["registered", "command", "kill_command", "unknown", None]))
    payload = draw(st.one_of(st.none(), st.integers(), st.text(max_size=10),
                             st.dictionaries(st.sampled_from(["command", "signal", "pid", "host_id", "x"]),
                                             st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=8), st.booleans()),
                                             max_size=3)))
    shape = draw(st.sampled_from(["json", "raw", "bytes"]))
    if shape == "raw":
        return draw(st.text(max_size=50))
    if shape == "bytes":
        return draw(st.binary(max_size=50))
    return json.dumps({"type": kind, "payload": payload})


def test_random_frames_never_break_the_session(dashboard, tmp_path):
    with Session(dashboard.url, tmp_path) as session:
        wait_for(lambda: session.connection.registered, 10, "registration")

        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
        @given(frames())
        def send(frame):
            expected = None
            try:
                expected = protocol.parse(frame)
            except protocol.ProtocolError:
                pass
            before = len(session.received)
            dashboard.send_raw("inproc", frame)
            if expected is not None and not isinstance(expected, protocol.Registered):
                wait_for(lambda: len(session.received) > before, 3, "valid frame delivered")
                assert session.received[-1] == expected

        send()
        # a final valid command still arrives on the same connection
        dashboard.send_command("inproc", "refresh-git")
        wait_for(lambda: protocol.Command("refresh-git") in session.received, 3, "command after fuzzing")
        assert session.connection.sessions == 1 and session.connection.registered

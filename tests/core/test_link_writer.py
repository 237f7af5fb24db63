"""Only the writer fails: the session must end at once and a new one deliver what the writer could not
(issue 12, "a writer failure ends the session at once"). The dashboard keeps talking the whole time, so
the reader alone would never notice (its ping deadline keeps being met) and, without this rule, the
agent would sit connected with a dead writer: nothing it queues would ever leave."""

from __future__ import annotations

import threading

from inproc import Session
from support import wait_for

from nixfleet_agent.link import session as session_mod


def test_a_writer_failure_ends_the_session_and_the_next_one_delivers(dashboard, tmp_path, monkeypatch) -> None:
    real_send = session_mod.send_text_frames
    failures: list[list[str]] = []

    def send(ws, batch: list[str]) -> None:
        if not failures and any('"command":"poison"' in text.replace(" ", "") for text in batch):
            failures.append(batch)
            raise BrokenPipeError(32, "Broken pipe")  # what a peer that reset the write side causes
        real_send(ws, batch)

    monkeypatch.setattr(session_mod, "send_text_frames", send)
    # deadlines far away: only the writer's own failure can end this session within the test
    with Session(dashboard.url, tmp_path, NIXFLEET_PING_INTERVAL="300", NIXFLEET_PING_TIMEOUT="600") as session:
        wait_for(lambda: session.connection.registered, 10, "registration")
        chatter_stop = threading.Event()

        def chatter() -> None:  # keeps the reader's deadline met: it sees a complete frame every 0.2 s
            while not chatter_stop.wait(0.2):
                try:
                    dashboard.send_command("inproc", "chatter")
                except LookupError:
                    pass  # between the two sessions

        talker = threading.Thread(target=chatter, daemon=True)
        talker.start()
        try:
            wait_for(lambda: len(session.received) >= 3, 10, "the reader to read the chatter")
            session.reporter.status("poison", "ok", 0, "written when the writer fails")
            status = dashboard.wait_message("status", where=lambda r: r.payload["command"] == "poison", timeout=15)
        finally:
            chatter_stop.set()
            talker.join(5)
        assert len(failures) == 1
        assert status.payload["message"] == "written when the writer fails"
        assert dashboard.hosts["inproc"].registrations == 2  # one new session, right away
        assert session.connection.sessions == 2

"""A command whose worker thread cannot be started (a task limit: ``RuntimeError: can't start new
thread``) is reported as an error and leaves the host able to run the next command (issue 12 item 5:
before, the busy flag stayed set for ever and every later command was rejected)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support import wait_for
from test_dispatcher_race import dispatcher_with_test


def test_a_failed_thread_start_releases_the_busy_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dispatcher, rep, _stop = dispatcher_with_test(tmp_path, "#!/bin/sh\necho fine\n")
    real_start = threading.Thread.start
    refused: list[str] = []

    def start(self: threading.Thread) -> None:
        if self.name.startswith("command-") and not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        dispatcher.on_command("test")
    except RuntimeError:
        pass  # the connection's message guard would log it (message_handler_failed) and read on
    assert refused == ["command-test"]
    assert rep.of("status") == [("test", "error", 1, "cannot start the command: can't start new thread")]
    assert dispatcher.pending() == (None, None)
    dispatcher.on_command("test")  # the next command is not rejected: it runs
    wait_for(lambda: len(rep.of("status")) == 2, 10, "the second command's status")
    assert rep.of("status")[1] == ("test", "ok", 0, "1/1 passed") and not rep.of("rejected")

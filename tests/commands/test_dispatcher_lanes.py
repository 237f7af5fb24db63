"""A reboot that waits (its 3 s announcement, a root side that never answers) must not hold up a
`stop`: before, both ran on the one control thread, so a stop arriving behind a pending privileged
reboot waited up to ~33 s, and so did any SIGKILL countdown."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nixfleet_agent.commands import Context, registry
from support import wait_for
from test_dispatcher_race import dispatcher_with_test


def test_stop_is_not_queued_behind_a_waiting_reboot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dispatcher, rep, stop_event = dispatcher_with_test(tmp_path, "#!/bin/sh\necho started\nexec sleep 600\n")
    reboot_waiting, release = threading.Event(), threading.Event()

    def slow_reboot(ctx: Context) -> None:  # stands in for a root side that never picks the request up
        reboot_waiting.set()
        release.wait(120)

    monkeypatch.setattr(registry, "reboot", slow_reboot)
    try:
        dispatcher.on_command("test")
        wait_for(lambda: dispatcher.pending()[1] is not None, 10, "the test's child to start")
        dispatcher.on_command("reboot")
        assert reboot_waiting.wait(10)
        dispatcher.on_command("stop")
        wait_for(lambda: any(s[0] == "test" for s in rep.of("status")), 20, "the test to be stopped")
        assert [s[1] for s in rep.of("status") if s[0] == "test"] == ["stopped"]
    finally:
        release.set()
        stop_event.set()

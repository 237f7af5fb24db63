"""A reboot that waits (its 3 s announcement, a root side that never answers) must not hold up a
`stop`: before, both ran on the one control thread, so a stop arriving behind a pending privileged
reboot waited up to ~33 s, and so did any SIGKILL countdown."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from nixfleet_agent.commands import Context, registry
from nixfleet_agent.dispatcher import Dispatcher
from nixfleet_agent.host.status import StatusStore
from support import wait_for
from test_dispatcher_race import RecordingReporter


def test_stop_is_not_queued_behind_a_waiting_reboot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tests = tmp_path / "repo" / "hosts" / "h" / "tests"
    tests.mkdir(parents=True)
    (tests / "T01.sh").write_text("#!/bin/sh\necho started\nexec sleep 600\n")
    (tests / "T01.sh").chmod(0o755)
    cfg = SimpleNamespace(state_dir=tmp_path / "state", op_log_max_mb=50, repo_dir=tmp_path / "repo", hostname="h",
                          platform="nixos", stop_grace=3)
    cfg.state_dir.mkdir(mode=0o700)
    rep = RecordingReporter()
    stop_event = threading.Event()
    dispatcher = Dispatcher(Context(cfg=cfg, reporter=rep, status=StatusStore(cfg.state_dir), repo=None,  # type: ignore[arg-type]
                                    stop_event=stop_event))
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

"""``kill`` and ``stop`` share one cancel path (issue 13 item 5): a ``kill`` that arrives while a
command is between two steps (no child running) cancels the next step, exactly like ``stop``;
it used to answer "No command running to kill" and let the command go on."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from nixfleet_agent.commands import Context, Job
from nixfleet_agent.dispatcher import Dispatcher
from nixfleet_agent.host.status import StatusStore
from support import wait_for
from test_dispatcher_race import RecordingReporter


@pytest.mark.parametrize("how", ["kill", "kill_command", "stop"])
def test_cancel_between_two_steps_skips_the_next_one(tmp_path: Path, how: str) -> None:
    cfg = SimpleNamespace(state_dir=tmp_path / "state", privileged_dir=tmp_path / "privileged", op_log_max_mb=50,
                          repo_dir=tmp_path / "repo", hostname="h", platform="nixos", stop_grace=3)
    cfg.state_dir.mkdir(mode=0o700)
    rep = RecordingReporter()
    dispatcher = Dispatcher(Context(cfg=cfg, reporter=rep, status=StatusStore(cfg.state_dir), repo=None,  # type: ignore[arg-type]
                                    stop_event=threading.Event()))
    between, go_on = threading.Event(), threading.Event()
    second = tmp_path / "second-step-ran"
    results: list[int] = []

    def body(job: Job) -> None:
        results.append(job.run(["true"]).exit_code)  # step 1
        between.set()
        go_on.wait(10)  # between steps: no child is tracked now
        results.append(job.run(["touch", str(second)]).exit_code)  # step 2
        job.status("ok", 0, "")

    with dispatcher._lock:
        dispatcher._begin_locked("two-steps")
    dispatcher._start_worker("two-steps", body)
    assert between.wait(10)
    if how == "kill":
        dispatcher.on_command("kill")
    elif how == "kill_command":
        dispatcher.on_kill("SIGTERM", 0)
    else:
        dispatcher.on_command("stop")
    wait_for(lambda: rep.of("output") or rep.of("status"), 5, f"the {how} to be handled")
    go_on.set()
    wait_for(lambda: len(results) == 2, 10, "the command to end")
    assert results == [0, 130] and not second.exists(), rep.calls
    assert not [c for c in rep.of("output") if "No command running" in c[1]], rep.calls

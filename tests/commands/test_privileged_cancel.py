"""``stop`` and ``kill`` reach a privileged switch (issue 13): the agent may not signal root's
processes, so both go through the one cancel path, which asks root through ``cancel.json``; the
real root program (run the way the path unit runs it) ends the build's process group and answers
"cancelled by stop/kill from the dashboard", and the agent takes the next command. And the
follower always ends: root's pid from ``started.json`` gone without a result, or the agent's own
deadline (``privileged_timeout`` plus a margin) passed."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support import wait_for
from test_privileged_channel import HOST, start

from nixfleet_agent.ops import operations, rootwatch


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["stop", "kill", "kill_command-SIGKILL"])
def test_stop_and_kill_cancel_a_privileged_switch_through_root(session, fleet_repo, tmp_path: Path,
                                                               how: str) -> None:
    state, root = start(session, fleet_repo, tmp_path)
    try:
        session.shims.set("hold", 1)
        mark = session.send("switch")
        session.dash.wait_message("output", since=mark, timeout=30,
                                  where=lambda r: "holding (test gate)" in r.payload["line"])
        (build,) = session.shims.calls("nixos-rebuild")
        if how == "stop":
            stop = session.status_of("stop", session.send("stop")).payload
            assert stop["status"] == "ok" and "asked the privileged unit to cancel switch" in stop["message"], stop
        elif how == "kill":
            session.dash.send_command(HOST, "kill")
        else:
            session.dash.send_kill(HOST, "SIGKILL", 0)
        status = session.status_of("switch", mark, timeout=30).payload
        assert status["status"] == "stopped", status
        lines = session.lines(session.dash.messages(since=mark))
        assert any("cancelled by stop/kill from the dashboard" in line for line in lines), lines
        assert _gone(build["pid"]), "root left the build running"
        wait_for(lambda: root.runs == [1], 10, "the root run to exit")
        assert not (state / "privileged" / "cancel.json").exists()  # root consumed it
        session.shims.clear("hold")
        mark = session.dash.mark()
        status, records = session.run("switch", timeout=30)  # the agent takes the next command
        assert status["status"] == "ok", (status, session.lines(records))
    finally:
        session.shims.clear("hold")
        root.close()


def test_stop_before_root_picked_the_request_up_takes_it_back(session, tmp_path: Path) -> None:
    """No root unit runs (e.g. it is slow to start): the request is withdrawn, nothing builds later."""
    out_dir = tmp_path / "privileged-root"
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(out_dir))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    request = state / "privileged" / "request.json"
    mark = session.send("switch")
    wait_for(request.exists, 10, "the agent's request")
    stop = session.status_of("stop", session.send("stop")).payload
    assert stop["status"] == "ok", stop
    status = session.status_of("switch", mark, timeout=20).payload
    assert status["status"] == "stopped", status
    assert not request.exists()
    status, _ = session.run("refresh-lock")
    assert status["status"] == "ok"


# ---------------------------------------------------------------------------- the follower ends


def _op(tmp_path: Path, started_at: float | None = None) -> tuple[operations.Operation, Path, Path]:
    state, priv = tmp_path / "state", tmp_path / "priv"
    (state / "privileged").mkdir(parents=True)
    log, result = operations.paths_for(state, priv, "20260101T000000Z-abcd", "privileged")
    result.parent.mkdir(parents=True)
    log.write_text("building the system configuration...\n")  # root consumed the request, started
    op = operations.Operation(id="20260101T000000Z-abcd", command="switch", action="switch", argv=[],
                              launcher="privileged", log_path=str(log), result_path=str(result), commit="a" * 40,
                              flake_attr="h", **({} if started_at is None else {"started_at": started_at}))
    return op, state, state / "privileged" / "request.json"


def _follow(state: Path, op: operations.Operation, request: Path, timeout: float = 7200) -> operations.Result:
    """Run the follower on a thread; fail (instead of hanging the suite) if it never returns."""
    got: list[operations.Result | None] = []
    stop = threading.Event()
    worker = threading.Thread(target=lambda: got.append(operations.follow(
        state, op, lambda line: None, stop, request_path=request, timeout=timeout)), daemon=True)
    worker.start()
    worker.join(30)
    stop.set()
    assert got and got[0] is not None, "the follower kept waiting"
    return got[0]


def test_follower_ends_when_roots_recorded_pid_is_gone_without_a_result(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No systemd to ask (nix-darwin, or systemctl missing): root's started.json names a pid that
    no longer exists and no result came (a root run killed outright)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))  # no systemctl: the unit state is unknown
    op, state, request = _op(tmp_path)
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    Path(op.result_path).with_name("started.json").write_text(json.dumps({"id": op.id, "pid": dead.pid}))
    result = _follow(state, op, request)
    assert result.exit_code == 1
    assert result.start_error == f"the privileged run of {op.id} (root pid {dead.pid}) ended without a result"


def test_follower_keeps_waiting_while_roots_pid_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    op, state, request = _op(tmp_path)
    Path(op.result_path).with_name("started.json").write_text(json.dumps({"id": op.id, "pid": os.getpid()}))

    def answer() -> None:
        time.sleep(3 * rootwatch.CHECK_EVERY)  # several liveness checks see the pid alive
        Path(op.result_path).write_text(json.dumps({"id": op.id, "exit_code": 0}))

    threading.Thread(target=answer, daemon=True).start()
    assert _follow(state, op, request).exit_code == 0


def test_follower_has_its_own_deadline_and_then_asks_root_to_cancel(tmp_path: Path) -> None:
    """Root never writes (an older root unit, a hung one): the agent gives up at
    privileged_timeout + margin after the request and leaves a cancel for root."""
    timeout = 60
    op, state, request = _op(tmp_path, started_at=time.time() - timeout - rootwatch.DEADLINE_MARGIN - 1)
    result = _follow(state, op, request, timeout=timeout)
    assert result.exit_code == 124
    assert result.start_error is not None and result.start_error.startswith(
        f"no result from the privileged unit within {timeout + rootwatch.DEADLINE_MARGIN:.0f}s")
    assert json.loads(rootwatch.cancel_path(state).read_text()) == {"id": op.id}

"""Home Manager on Linux (issue 13 item 2) at the agent level: which launcher a detached switch
gets, the switch wrapper's bounded log and its ExecStopPost= result, the follower's liveness check
of a transient unit, and the restart rule for a changed user unit. The real user manager is in
tests/system/test_system_hm.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nixfleet_agent.ops import journal, liveness, logcap, operations, transient

from cmd_support import SHIMS

OP_ID = "20260101T000000Z-abcd"


# ----- which launcher ------------------------------------------------------------------------------


@pytest.fixture
def user_manager(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment that looks like a user unit's: XDG_RUNTIME_DIR with a listening
    ``systemd/private`` socket, and stand-ins for systemctl/systemd-run on PATH."""
    runtime = tmp_path / "run"
    (runtime / "systemd").mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(runtime / "systemd" / "private"))
    sock.listen()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").symlink_to(SHIMS / "_shim")
    (bin_dir / "systemd-run").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "systemd-run").chmod(0o755)
    try:
        yield {"XDG_RUNTIME_DIR": str(runtime), "PATH": f"{bin_dir}:/usr/bin:/bin",
               "NIXFLEET_SHIM_DIR": str(tmp_path / "shim-control")}
    finally:
        sock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="user managers are systemd's (Linux)")
def test_a_transient_unit_only_where_a_user_manager_answers(tmp_path: Path, user_manager: dict[str, str]) -> None:
    state = tmp_path / "state"
    assert transient.why_unavailable(state, user_manager) is None
    no_runtime = {k: v for k, v in user_manager.items() if k != "XDG_RUNTIME_DIR"}
    assert transient.why_unavailable(state, no_runtime) == "no XDG_RUNTIME_DIR (no systemd user manager)"
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert "no user manager socket" in (transient.why_unavailable(state, {**user_manager,
                                                                          "XDG_RUNTIME_DIR": str(empty)}) or "")
    no_run = dict(user_manager, PATH=str(Path(user_manager["PATH"].split(":")[0]).parent / "nothing"))
    assert transient.why_unavailable(state, no_run) == "systemd-run not on PATH"
    # a socket nobody answers on (a manager that died): systemctl fails, the session is used
    control = Path(user_manager["NIXFLEET_SHIM_DIR"])
    control.mkdir()
    (Path(user_manager["PATH"].split(":")[0]) / "systemctl").unlink()
    (Path(user_manager["PATH"].split(":")[0]) / "systemctl").write_text(
        "#!/bin/sh\necho 'Failed to connect to bus: Connection refused' >&2\nexit 1\n")
    (Path(user_manager["PATH"].split(":")[0]) / "systemctl").chmod(0o755)
    assert transient.why_unavailable(state, user_manager) == (
        "the user manager does not answer (Failed to connect to bus: Connection refused)")
    # an argument systemd would rewrite ($ expansion, % specifiers, word splitting) is refused
    assert "characters systemd would change" in (transient.why_unavailable(tmp_path / "my state", user_manager) or "")


def test_switch_without_a_user_manager_runs_in_a_session(session) -> None:
    """No XDG_RUNTIME_DIR in the agent's environment (macOS, a bare session): detached as before."""
    session.start(NIXFLEET_PLATFORM="home-manager")
    mark = session.send("switch")
    assert session.status_of("switch", mark).payload["status"] == "ok"
    ops = Path(session.agent.env["NIXFLEET_STATE_DIR"]) / "operations"
    [record] = [json.loads(p.read_text()) for p in ops.glob("*.json")]
    assert record["launcher"] == "detached" and record["unit"] == ""
    call = session.shims.calls("home-manager")[-1]
    assert call["sid"] == record["pid"] != session.agent.pid  # the wrapper's own session


# ----- the wrapper ---------------------------------------------------------------------------------


def _operation(tmp_path: Path, argv: list[str], unit: str = "") -> operations.Operation:
    log, result = operations.paths_for(tmp_path, tmp_path / "priv", OP_ID, "detached")
    log.parent.mkdir(parents=True, exist_ok=True)
    op = operations.Operation(id=OP_ID, command="switch", action="switch", argv=argv, launcher="detached",
                              log_path=str(log), result_path=str(result), unit=unit)
    operations.save(tmp_path, op)
    return op


def _wrap(op: operations.Operation, max_bytes: int, env: dict[str, str] | None = None) -> dict[str, object]:
    launch = operations.write_launch(op, max_bytes, env)
    subprocess.run(operations.wrapper_argv(str(launch)), check=True, timeout=60, stdin=subprocess.DEVNULL)
    assert not launch.exists(), "the launch file (it may carry the environment) was kept"
    return json.loads(Path(op.result_path).read_text())


def test_wrapper_log_is_cut_by_the_same_rule_and_the_child_runs_to_its_end(tmp_path: Path) -> None:
    """Issue 13 item 5 for detached switches: the child wrote straight into the log, unbounded."""
    script = "for i in $(seq 1 40000); do echo \"line $i of a chatty activation\"; done; echo last >&2; exit 3"
    op = _operation(tmp_path, ["sh", "-c", script])
    Path(op.log_path).write_text("# operation header\n")
    limit = 64 * 1024
    result = _wrap(op, limit)
    assert result["exit_code"] == 3  # not blocked on a full pipe, not killed by SIGPIPE
    data = Path(op.log_path).read_bytes()
    body, marker = data[: data.rindex(b"[nixfleet-agent:")], data[data.rindex(b"[nixfleet-agent:"):]
    assert len(body) <= limit and body.endswith(b"\n")
    assert body.startswith(b"# operation header\nline 1 of")  # the header counts, lines stay whole
    assert marker.decode() == logcap.marker(limit, logcap.DROPPED)
    assert b"last" not in data


def test_detached_switch_log_is_bounded_by_op_log_max_mb(session) -> None:
    """The detached switch's child wrote straight into logs/<id>.log: op_log_max_mb bounded only
    attached commands, a chatty activation filled the state directory."""
    session.shims.set("rebuild_lines", 30000)  # ~1.3 MiB
    session.start(NIXFLEET_PLATFORM="home-manager", NIXFLEET_OP_LOG_MAX_MB="1")
    mark = session.send("switch")
    assert session.status_of("switch", mark, timeout=60).payload["status"] == "ok"
    [log] = list((Path(session.agent.env["NIXFLEET_STATE_DIR"]) / "logs").glob("*.log"))
    data = log.read_bytes()
    assert data.endswith(logcap.marker(1 << 20, logcap.DROPPED).encode())
    assert len(data) - len(logcap.marker(1 << 20, logcap.DROPPED)) <= 1 << 20


def test_wrapper_stops_reading_when_a_grandchild_keeps_the_pipe(tmp_path: Path) -> None:
    op = _operation(tmp_path, ["sh", "-c", "sleep 120 & echo started"])
    result = _wrap(op, 1 << 20)  # returns (the subprocess timeout of 60 s would fail the test)
    assert result["exit_code"] == 0
    assert Path(op.log_path).read_text() == "started\n"


def test_wrapper_uses_the_environment_of_the_launch_file(tmp_path: Path) -> None:
    op = _operation(tmp_path, ["sh", "-c", "echo \"PATH=$PATH FOO=$FOO\""])
    _wrap(op, 1 << 20, env={"PATH": "/usr/bin:/bin", "FOO": "from-the-agent"})
    assert Path(op.log_path).read_text() == "PATH=/usr/bin:/bin FOO=from-the-agent\n"


def test_stop_post_writes_a_result_only_when_the_wrapper_could_not(tmp_path: Path) -> None:
    op = _operation(tmp_path, ["true"], unit=journal.switch_unit(OP_ID))
    env = dict(os.environ, SERVICE_RESULT="signal", EXIT_CODE="killed", EXIT_STATUS="KILL")
    post = operations.wrapper_argv("--post", op.result_path, op.unit)
    subprocess.run(post, check=True, timeout=30, env=env)
    res = operations.read_result(Path(op.result_path))
    assert res is not None and (res.exit_code, res.signal) == (137, 9)
    assert res.start_error == (f"the switch unit {op.unit} ended without a result "
                               "(SERVICE_RESULT=signal, EXIT_CODE=killed, EXIT_STATUS=KILL)")
    Path(op.result_path).write_text(json.dumps({"exit_code": 0, "signal": None}))
    subprocess.run(post, check=True, timeout=30, env=env)
    assert json.loads(Path(op.result_path).read_text()) == {"exit_code": 0, "signal": None}


# ----- following a transient unit ------------------------------------------------------------------


def _follow(tmp_path: Path, op: operations.Operation, monkeypatch: pytest.MonkeyPatch, state: str | None) -> object:
    control = tmp_path / "shim-control"
    control.mkdir(exist_ok=True)
    if state is not None:
        (control / "unit_state").write_text(state)
        monkeypatch.setenv("PATH", f"{SHIMS}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    else:
        monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    monkeypatch.setenv("NIXFLEET_SHIM_DIR", str(control))
    monkeypatch.setattr(operations, "LIVENESS_EVERY", 0.05)
    lines: list[str] = []
    stop = threading.Event()
    timer = threading.Timer(30, stop.set)  # a follower that never ends fails the test, not the suite
    timer.start()
    try:
        return operations.follow(tmp_path, op, lines.append, stop)
    finally:
        timer.cancel()


@pytest.mark.parametrize(("state", "expected"), [
    ("ActiveState=failed\nResult=signal\nLoadState=loaded",
     "ended without a result (ActiveState=failed, Result=signal)"),
    ("ActiveState=inactive\nResult=success\nLoadState=not-found",
     "is gone without a result (it never started, or ended and was collected without writing one)"),
], ids=["failed", "collected"])
def test_a_unit_that_ended_without_a_result_ends_the_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str, expected: str
) -> None:
    op = _operation(tmp_path, ["true"], unit=journal.switch_unit(OP_ID))
    result = _follow(tmp_path, op, monkeypatch, state)
    assert isinstance(result, operations.Result)
    assert result.exit_code == 1 and result.start_error == f"the switch unit {op.unit} {expected}"


def test_a_running_unit_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    op = _operation(tmp_path, ["true"], unit=journal.switch_unit(OP_ID))
    threading.Timer(0.5, lambda: Path(op.result_path).write_text('{"exit_code": 0}')).start()
    result = _follow(tmp_path, op, monkeypatch, "ActiveState=active\nResult=success\nLoadState=loaded")
    assert isinstance(result, operations.Result) and result.ok


def test_without_a_manager_to_ask_the_wrappers_pid_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    op = _operation(tmp_path, ["true"], unit=journal.switch_unit(OP_ID))
    op.pid = gone.pid
    result = _follow(tmp_path, op, monkeypatch, None)
    assert isinstance(result, operations.Result)
    assert result.start_error == f"the switch process {gone.pid} of {op.unit} ended without a result"


def test_a_record_naming_another_unit_is_quarantined(tmp_path: Path) -> None:
    op = _operation(tmp_path, ["true"], unit="dbus.service")
    assert operations.unreported(tmp_path) == []
    assert (operations.ops_dir(tmp_path) / f"{op.id}.bad").is_file()


def test_unit_watch_needs_two_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """One 'inactive' can fall between the start job and the exec; two in a row end it."""
    answers = iter([{"ActiveState": "inactive"}, {"ActiveState": "active"}, {"ActiveState": "failed"},
                    {"ActiveState": "failed", "Result": "exit-code"}])
    monkeypatch.setattr(liveness, "unit_state", lambda unit, user=False: next(answers))
    watch = liveness.UnitWatch("u.service", every=0)
    assert [watch.ended() for _ in range(3)] == [None, None, None]
    assert watch.ended() == "the switch unit u.service ended without a result (ActiveState=failed, Result=exit-code)"


# ----- restarting after a switch -------------------------------------------------------------------


def test_home_manager_switch_that_changes_the_user_unit_restarts_the_agent(session, tmp_path: Path) -> None:
    """The rule NixOS uses, for the unit Home Manager links (activation does not restart it:
    X-RestartIfChanged=false): the agent exits with restart_exit_code, the manager starts it anew."""
    store = tmp_path / "store"
    store.mkdir()
    old, new = store / "aaaa-nixfleet-agent.service", store / "bbbb-nixfleet-agent.service"
    old.write_text("[Service]\nExecStart=/nix/store/aaaa-nixfleet-agent/bin/nixfleet-agent\n")
    new.write_text("[Service]\nExecStart=/nix/store/bbbb-nixfleet-agent/bin/nixfleet-agent\n")
    unit = tmp_path / ".config/systemd/user/nixfleet-agent.service"  # HOME is tmp_path
    unit.parent.mkdir(parents=True)
    unit.symlink_to(old)
    session.start(NIXFLEET_PLATFORM="home-manager", NIXFLEET_RESTART_EXIT_CODE="0")
    mark = session.send("switch")  # same unit: re-registers, keeps running
    assert session.status_of("switch", mark).payload["status"] == "ok"
    session.wait_reregistered(mark)
    assert session.agent.running()
    session.shims.set("swap_unit", str(new))
    mark = session.send("switch")
    assert session.status_of("switch", mark).payload["status"] == "ok"
    assert session.agent.wait(10) == 0  # the configured restart exit code
    assert "♻️  the agent's service definition changed: the agent restarts (exit 0) to run the new version" in (
        session.lines(session.dash.messages(since=mark)))

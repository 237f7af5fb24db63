"""Issue 13, item 7: files the agent wrote must never crash or misdirect it.

Real agent processes against the reference dashboard; the journal records are written the way a
disk fault, an old agent or a hand edit leaves them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from support import run_cli

HOST = "test-host"


def _record(state: Path, op_id: str, **fields: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "id": op_id, "command": "switch", "action": "switch", "argv": ["nixos-rebuild", "switch"],
        "launcher": "detached", "log_path": str(state / "logs" / f"{op_id}.log"),
        "result_path": str(state / "operations" / f"{op_id}.result"), "pid": None,
        "started_at": 1.0, "reported": False,
    }
    rec.update(fields)
    return rec


def _write(state: Path, name: str, record: object) -> Path:
    ops = state / "operations"
    ops.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = ops / f"{name}.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def _tree(root: Path, skip: Path) -> set[str]:
    """Everything under ``root`` but the state dir and the harness's own agent-*.log files."""
    return {str(p) for p in root.rglob("*") if skip not in p.parents and p != skip
            and not (p.parent == root and p.name.startswith("agent-") and p.suffix == ".log")}


def test_hostile_id_is_quarantined_and_never_becomes_a_path(session) -> None:
    session.start()
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    session.agent.stop()
    parent = state.parent
    before = _tree(parent, state)
    _write(state, "20261201T000000Z-abcd", _record(state, "../../escape",
                                                      log_path=str(state / "logs" / "../../escape.log")))
    mark = session.dash.mark()
    session.start()
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
    assert (state / "operations" / "20261201T000000Z-abcd.bad").is_file()
    assert not (state / "operations" / "20261201T000000Z-abcd.json").exists()
    assert _tree(parent, state) - before == set(), "the agent wrote outside its state dir"
    assert not [r for r in session.dash.messages("status", since=mark)
                if "internal error" in str(r.payload.get("message", ""))]
    assert session.agent.events("operation_record_quarantined")
    # reported once: the next start does not find it again
    session.agent.stop()
    session.start()
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
    assert not session.agent.events("operation_record_quarantined")


def test_wrong_typed_record_is_quarantined_once_not_an_internal_error_each_start(session) -> None:
    session.start()
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    session.agent.stop()
    _write(state, "20261201T000001Z-beef", _record(state, "20261201T000001Z-beef", pid="123", argv="x"))
    _write(state, "20261201T000002Z-cafe", '{"id": "20261201T000002Z-cafe", "comm')  # truncated
    for _ in range(2):
        mark = session.dash.mark()
        session.start()
        session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
        hb = session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
        assert hb.payload.get("pending_command") in (None, "")  # not busy with a broken record
        assert not session.dash.messages("status", since=mark)
        session.agent.stop()
    assert sorted(p.name for p in (state / "operations").iterdir()) == [
        "20261201T000001Z-beef.bad", "20261201T000002Z-cafe.bad"]
    human = run_cli(["status"], session.agent.env)
    assert human.returncode == 0, human.stderr
    assert "quarantined operation record" in human.stdout


def test_a_privileged_record_naming_another_results_directory_is_quarantined(session, tmp_path: Path) -> None:
    """A record can only point at root's results in the configured privileged directory: one that
    names a look-alike tree elsewhere (with a forged success) is not reported, it is quarantined."""
    session.start()
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    session.agent.stop()
    op_id = "20261201T000003Z-f00d"
    forged = tmp_path / "forged" / op_id
    forged.mkdir(parents=True)
    (forged / "output.log").write_text("switched\n")
    (forged / "result.json").write_text(json.dumps({"id": op_id, "exit_code": 0, "finished_at": "x"}))
    _write(state, op_id, _record(state, op_id, launcher="privileged", log_path=str(forged / "output.log"),
                                 result_path=str(forged / "result.json")))
    mark = session.dash.mark()
    session.start()
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
    assert (state / "operations" / f"{op_id}.bad").is_file()
    assert not session.dash.messages("status", since=mark), "a forged result was reported"


def test_status_never_raises_on_a_type_corrupted_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
           "NIXFLEET_STATE_DIR": str(state)}
    for doc in ({"compartments": ["git"], "last_command": "x", "extras": []},
                {"compartments": {"git": "ok", "tests": {"status": 3, "message": None}},
                 "last_command": {"command": 1, "message": ["a"]}, "extras": {"repo_error": 7}},
                [1, 2], "not json {"):
        (state / "state.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
        for args in (["status"], ["status", "--json"]):
            result = run_cli(args, env)
            assert result.returncode == 0 and "Traceback" not in result.stderr, (doc, result.stderr)
            assert "state dir" in result.stdout or '"state_dir"' in result.stdout


def test_status_does_not_hang_on_a_state_file_that_is_a_fifo(tmp_path: Path) -> None:
    """A FIFO named state.json (no writer) used to block `nixfleet-agent status` in open()."""
    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / "state.json")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
           "NIXFLEET_STATE_DIR": str(state)}
    result = run_cli(["status", "--json"], env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_status_never_raises_on_a_broken_state_dir(tmp_path: Path) -> None:
    """A dangling log symlink and an 'alive' that is a loop: status still prints what it can."""
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    (state / "logs" / "20261201T000000Z-abcd.log").symlink_to(tmp_path / "gone")
    (state / "alive").symlink_to(state / "alive")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
           "NIXFLEET_STATE_DIR": str(state)}
    for args in (["status"], ["status", "--json"]):
        result = run_cli(args, env)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_status_never_raises_on_an_unreadable_state_dir(tmp_path: Path) -> None:
    """Run as another user (the agent's state dir is 0700): one line says so, exit 0."""
    import subprocess
    import sys

    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root to run the status command as another user")
    try:
        probe = subprocess.run([sys.executable, "-c", "import nixfleet_agent.cli"], user=65534, cwd="/",
                               env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")}, capture_output=True,
                               check=False).returncode
    except PermissionError:
        probe = 126
    if probe != 0:
        pytest.skip("the interpreter or the source is not readable by uid 65534 here")
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    (state / "state.json").write_text("{}")
    state.chmod(0o700)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
           "NIXFLEET_STATE_DIR": str(state), "HOME": "/"}
    result = subprocess.run([sys.executable, "-m", "nixfleet_agent.cli", "status"], env=env, user=65534,
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, cwd="/")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr

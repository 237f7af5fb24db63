"""ops/attached.py in-process, with real processes: what identifies a group left behind by a killed
agent, when it is signalled, and which record is someone else's to report (issue 13 item 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nixfleet_agent.ops import attached, journal

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process identity via /proc (Linux)")


class Reporter:
    def __init__(self) -> None:
        self.statuses: list[tuple[str, str, int, str]] = []

    def status(self, command: str, status: str, exit_code: int, message: str = "") -> None:
        self.statuses.append((command, status, exit_code, message))


class Compartments:
    def __init__(self) -> None:
        self.set_calls: list[tuple[str, str, str]] = []

    def set(self, compartment: str, status: str, message: str) -> None:
        self.set_calls.append((compartment, status, message))


def _foreign(record: attached.Record, state: Path) -> None:
    """Make ``record`` look as if another (dead) agent process wrote it."""
    record.agent_pid = 2**22 + 1
    attached._save(state, record, durable=False)


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True, stdin=subprocess.DEVNULL)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_live_group_is_ended_and_reported(tmp_path: Path, sleeper) -> None:
    record = attached.begin(tmp_path, "op1", "test")
    assert record is not None
    attached.child_started(tmp_path, record, sleeper.pid)
    assert record.pgid == sleeper.pid and record.start_time is not None
    _foreign(record, tmp_path)
    reporter, comps = Reporter(), Compartments()
    attached.recover(tmp_path, reporter, comps, grace=5)
    assert reporter.statuses == [("test", "error", 1, f"interrupted: the agent was killed while `test` ran "
                                  f"(pid {sleeper.pid}); its processes were ended (1 process(es), SIGTERM)")]
    assert sleeper.wait(5) == -signal.SIGTERM
    assert comps.set_calls == [("tests", "error", "Tests interrupted (the agent was killed)")]
    assert not list(attached.records_dir(tmp_path).iterdir())


def test_a_group_that_ignores_sigterm_gets_sigkill(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, "
                             "signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
                            start_new_session=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        record = attached.begin(tmp_path, "op2", "pull")
        assert record is not None
        attached.child_started(tmp_path, record, proc.pid)
        _foreign(record, tmp_path)
        reporter = Reporter()
        attached.recover(tmp_path, reporter, None, grace=0.3)
        assert reporter.statuses[0][3].endswith("its processes were ended (1 process(es); SIGKILL after 0.3s)")
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_pid_with_another_start_time_is_left_alone(tmp_path: Path, sleeper) -> None:
    record = attached.begin(tmp_path, "op3", "test")
    assert record is not None
    attached.child_started(tmp_path, record, sleeper.pid)
    assert record.start_time is not None
    record.start_time -= 1  # the recorded process started earlier: this pid was reused
    _foreign(record, tmp_path)
    reporter = Reporter()
    attached.recover(tmp_path, reporter, None, grace=0.3)
    assert "the pid now belongs to another process, which was left alone" in reporter.statuses[0][3]
    assert sleeper.poll() is None


def test_killed_before_any_child_ran(tmp_path: Path) -> None:
    record = attached.begin(tmp_path, "op6", "pull-switch")  # killed before its first child
    assert record is not None
    _foreign(record, tmp_path)
    reporter, comps = Reporter(), Compartments()
    attached.recover(tmp_path, reporter, comps)
    assert reporter.statuses == [("pull-switch", "error", 1, "interrupted: the agent was killed while "
                                  "`pull-switch` ran; no process of it was recorded")]
    assert comps.set_calls == [("system", "error", "Switch interrupted (the agent was killed)")]


def test_killed_while_handing_over_the_real_status_resends_it_not_interrupted(tmp_path: Path) -> None:
    record = attached.begin(tmp_path, "op8", "test")
    assert record is not None
    attached.finalize(tmp_path, record, "ok", 0, "1/1 passed via https://fleet:hunter2@git.example/r")
    assert "hunter2" not in (attached.records_dir(tmp_path) / "op8.json").read_text()  # a state file
    _foreign(record, tmp_path)
    reporter, comps = Reporter(), Compartments()
    attached.recover(tmp_path, reporter, comps)
    ((command, status, code, message),) = reporter.statuses
    assert (command, status, code) == ("test", "ok", 0) and message.startswith("1/1 passed via https://")
    assert "hunter2" not in message and comps.set_calls == []


def test_no_record_for_a_name_that_is_no_command(tmp_path: Path) -> None:
    assert attached.begin(tmp_path, "op7", "Rm -rf /") is None
    assert not attached.records_dir(tmp_path).exists()


def test_a_record_whose_operation_journal_owns_the_command_is_dropped_silently(tmp_path: Path) -> None:
    record = attached.begin(tmp_path, "op4", "pull-switch")
    assert record is not None
    _foreign(record, tmp_path)
    journal.ops_dir(tmp_path).mkdir(parents=True)
    (journal.ops_dir(tmp_path) / "op4.json").write_text("{}")  # the switch after the pull: its own journal
    reporter = Reporter()
    attached.recover(tmp_path, reporter)
    assert reporter.statuses == [] and not list(attached.records_dir(tmp_path).iterdir())


def test_a_record_of_this_very_process_is_not_recovered(tmp_path: Path) -> None:
    attached.begin(tmp_path, "op5", "test")
    reporter = Reporter()
    attached.recover(tmp_path, reporter)
    assert reporter.statuses == [] and len(list(attached.records_dir(tmp_path).iterdir())) == 1


@pytest.mark.parametrize("patch, reason", [
    ({"pid": True, "pgid": 5}, "field pid has the wrong type"),
    ({"pid": 5, "pgid": None}, "fields pid and pgid must both be set"),
    ({"pid": -3, "pgid": -3}, "field pid has the wrong type"),
    ({"command": "rm -rf"}, "field command is not a command name"),
    ({"id": "../x"}, "is not a plain name equal to the file name"),
    ({"started_at": "yesterday"}, "field started_at has the wrong type"),
    ({"final": ["done", 0, ""]}, "field final has the wrong type"),
    ({"final": ["ok", "0", ""]}, "field final has the wrong type"),
])
def test_bad_records_are_quarantined(tmp_path: Path, patch: dict, reason: str) -> None:
    good = {"id": "rec", "command": "test", "agent_pid": 7, "boot_id": "b", "started_at": 1.0,
            "pid": None, "pgid": None, "start_time": None}
    attached.parse(good, "rec")
    with pytest.raises(journal.BadRecord, match=reason):
        attached.parse({**good, **patch}, "rec")
    directory = attached.records_dir(tmp_path)
    directory.mkdir()
    (directory / "rec.json").write_text(json.dumps({**good, **patch}))
    assert attached.load(tmp_path) == []
    assert [p.name for p in directory.iterdir()] == ["rec.bad"]


def test_ps_output_is_parsed_as_macos_prints_it() -> None:
    text = ("    1     1 Ss   Wed Dec  2 17:09:03 2026\n"
            "  812   812 Z    Thu Jan 15 08:00:59 2026\n"
            "garbage line\n")
    procs = attached.parse_ps(text)
    assert [(p.pid, p.pgid, p.sid, p.zombie) for p in procs] == [(1, 1, None, False), (812, 812, None, True)]
    assert procs[1].start_time - procs[0].start_time != 0

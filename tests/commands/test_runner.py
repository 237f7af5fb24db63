"""Runner behaviour the dashboard relies on: every line, in order, bounded, start errors visible."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest
from nixfleet_agent.ops import runner
from nixfleet_agent.ops import oplog
from support import wait_for


class RecordingSink:
    """Stands in for the Reporter: records (stream, line) in arrival order."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.commands: set[str] = set()

    def output(self, command: str, line: str, stream: str = "stdout") -> None:
        self.commands.add(command)
        self.lines.append((stream, line))

    def text(self, stream: str = "stdout") -> list[str]:
        return [line for s, line in self.lines if s == stream]


@pytest.mark.parametrize("mode", ["pipes", "pty"])
def test_200000_lines_arrive_complete_and_in_order(mode: str) -> None:
    sink = RecordingSink()
    res = runner.run(["seq", "1", "200000"], command="t", reporter=sink, mode=mode)
    assert res.ok
    assert sink.text() == [str(i) for i in range(1, 200001)]


@pytest.mark.parametrize("mode", ["pipes", "pty"])
def test_huge_line_is_cut_with_marker_and_following_lines_survive(mode: str) -> None:
    sink = RecordingSink()
    code = "import sys; sys.stdout.write('a'*(1<<20) + '\\nafter\\n' + 'b'*20000)"
    res = runner.run([sys.executable, "-c", code], command="t", reporter=sink, mode=mode)
    assert res.ok
    first, after, last = sink.text()
    kept = runner.MAX_LINE - runner.MARKER_ROOM
    assert first == "a" * kept + f" [... line truncated: {(1 << 20) - kept} more bytes]"
    assert len(first.encode()) <= runner.MAX_LINE
    assert after == "after"
    assert last == "b" * kept + f" [... line truncated: {20000 - kept} more bytes]"


def test_line_splitting_rules() -> None:
    got: list[str] = []
    sp = runner.LineSplitter(got.append, max_line=runner.MARKER_ROOM + 8)
    for piece in [b"one\r\n", b"tw", b"o\n\n", b"\xff\xfebad\n", b"\xc3", b"\xa9\n", b"x\r\r\n", b"0123456789" * 8 + b"\n", b"tail"]:
        sp.feed(piece)
    sp.close()
    assert got == ["one", "two", "", "\ufffd\ufffdbad", "é", "x\r", "01234567 [... line truncated: 72 more bytes]", "tail"]


def test_stdout_and_stderr_are_kept_apart() -> None:
    sink = RecordingSink()
    res = runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"], command="c", reporter=sink)
    assert res.exit_code == 3 and res.signal is None
    assert sink.text("stdout") == ["out"] and sink.text("stderr") == ["err"]
    assert sink.commands == {"c"}


def test_missing_program_is_reported_as_a_line(tmp_path: Path) -> None:
    sink = RecordingSink()
    res = runner.run(["definitely-not-a-program-xyz"], command="c", reporter=sink)
    assert res.exit_code == 127 and res.start_error
    assert sink.lines == [("stderr", "cannot start definitely-not-a-program-xyz: not found (not on PATH or missing)")]
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    res = runner.run([str(script)], command="c", reporter=sink)
    assert res.exit_code == 126 and "not executable" in sink.lines[-1][1]


def test_child_runs_in_its_own_session_with_stdin_devnull() -> None:
    sink = RecordingSink()
    pids: list[int | None] = []
    code = "import os,sys; print(os.getsid(0), os.getpgid(0), os.getpid()); print(repr(sys.stdin.read()))"
    res = runner.run([sys.executable, "-c", code], command="c", reporter=sink, on_pid=pids.append)
    assert res.ok
    sid, pgid, pid = map(int, sink.text()[0].split())
    assert sid == pgid == pid != os.getpid()
    assert sink.text()[1] == "''"
    assert pids == [pid, None]


def test_killed_child_reports_the_signal() -> None:
    sink = RecordingSink()
    pid_box: list[int] = []
    started = threading.Event()

    def on_pid(pid: int | None) -> None:
        if pid is not None:
            pid_box.append(pid)
            started.set()

    def killer() -> None:
        started.wait(5)
        wait_for(lambda: sink.lines, 5, "first output line")
        os.killpg(pid_box[0], signal.SIGTERM)

    t = threading.Thread(target=killer)
    t.start()
    res = runner.run(["sh", "-c", "echo started; sleep 30"], command="c", reporter=sink, on_pid=on_pid)
    t.join()
    assert res.signal == signal.SIGTERM and res.exit_code == 128 + signal.SIGTERM
    assert res.describe() == "terminated by SIGTERM"
    assert sink.text() == ["started"]


def test_background_grandchild_holding_the_pipe_does_not_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "DRAIN_GRACE", 0.3)
    sink = RecordingSink()
    res = runner.run(["sh", "-c", "echo a; (sleep 3; echo late) & echo b"], command="c", reporter=sink)
    assert res.ok
    assert sink.text() == ["a", "b"]
    assert "stopped reading" in sink.text("stderr")[0]


def test_output_also_lands_in_the_operation_log(tmp_path: Path) -> None:
    sink = RecordingSink()
    with oplog.open_log(tmp_path, header="# test") as log:
        runner.run(["sh", "-c", "echo one; echo two >&2"], command="c", reporter=sink, log=log)
    (path,) = oplog.list_logs(tmp_path)
    assert sorted(path.read_text().splitlines()) == sorted(["# test", "one", "two"])
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (oplog.logs_dir(tmp_path).stat().st_mode & 0o777) == 0o700


def test_log_rotation_keeps_last_20(tmp_path: Path) -> None:
    ids = [f"20260101T0000{i:02d}Z-abcd" for i in range(25)]
    for op_id in ids:
        oplog.open_log(tmp_path, op_id).close()
    assert [p.stem for p in oplog.list_logs(tmp_path)] == ids[-20:]

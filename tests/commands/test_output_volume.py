"""No output is lost or reordered through the whole path (child -> runner -> Outbox -> dashboard),
and the final status comes after the last line."""

from __future__ import annotations

from cmd_support import add_tests

MAX_LINE = 16 * 1024


def test_200000_lines_and_a_1mib_line_arrive_complete_in_order(session, fleet_repo) -> None:
    add_tests(fleet_repo, {
        "T01-flood.sh": "seq 1 200000",
        "T02-huge.sh": "yes x | head -n 1048576 | tr -d '\\n'; echo; echo after-huge; printf 'no-newline-tail'",
    })
    session.start()
    mark = session.send("test")
    status = session.status_of("test", mark, timeout=120)
    records = session.dash.messages(since=mark)[: status.index - mark + 1]
    assert status.payload["status"] == "ok", status.payload
    outputs = [r for r in records if r.type == "output" and r.payload["stream"] == "stdout"]
    lines = [r.payload["line"] for r in outputs]
    start = lines.index("▶ [1/2] T01-flood.sh") + 1
    assert lines[start:start + 200000] == [str(i) for i in range(1, 200001)]
    huge = lines.index("▶ [2/2] T02-huge.sh") + 1
    kept = MAX_LINE - 64
    assert lines[huge] == "x" * kept + f" [... line truncated: {(1 << 20) - kept} more bytes]"
    assert lines[huge + 1:huge + 3] == ["after-huge", "no-newline-tail"]
    assert max(r.size for r in records) < 512 * 1024  # the dashboard drops bigger frames
    # the status is the last thing about this command: no output after it
    assert not [r for r in session.dash.messages("output", since=status.index + 1) if r.payload["command"] == "test"]

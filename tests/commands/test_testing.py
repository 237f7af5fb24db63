"""``test``: each script on its own, test_progress after each, any failure fails, no tests = ok."""

from __future__ import annotations

from cmd_support import add_tests, kinds


def test_all_pass(session, fleet_repo) -> None:
    add_tests(fleet_repo, {"T02-b.sh": "echo b ok", "T01-a.sh": "echo a ok", "T10-c.sh": "echo c ok"})
    session.start()
    status, records = session.run("test")
    assert status["status"] == "ok" and status["message"] == "3/3 passed"
    progress = [r.payload for r in records if r.type == "test_progress"]
    assert [(p["current"], p["passed"], p["running"]) for p in progress] == [(1, 1, True), (2, 2, True), (3, 3, False), (3, 3, False)]
    assert progress[-1]["result"] == "3/3 passed" and progress[0]["total"] == 3
    lines = session.lines(records)
    assert [l for l in lines if l.startswith("▶")] == ["▶ [1/3] T01-a.sh", "▶ [2/3] T02-b.sh", "▶ [3/3] T10-c.sh"]
    assert kinds(records)[0] == "progress:tests:in_progress" and "progress:tests:complete" in kinds(records)


def test_an_early_failure_fails_the_run(session, fleet_repo) -> None:
    # upstream's loop returned only the last script's status: a failing first script was ignored
    add_tests(fleet_repo, {"T01-bad.sh": "echo broken >&2; exit 2", "T02-good.sh": "echo fine"})
    session.start()
    status, records = session.run("test")
    assert status["status"] == "error" and status["exit_code"] == 1
    assert status["message"] == "1/2 passed; failed: T01-bad.sh"
    assert [r.payload["passed"] for r in records if r.type == "test_progress"] == [0, 1, 1]
    assert ("broken", True) in [(r.payload["line"], r.payload["is_error"]) for r in records if r.type == "output"]
    assert "progress:tests:error" in kinds(records)


def test_scripts_do_not_get_the_agent_token(session, fleet_repo) -> None:
    add_tests(fleet_repo, {"T01-env.sh": 'echo "token=${NIXFLEET_TOKEN:-unset} host=${NIXFLEET_HOSTNAME}"'})
    session.start()
    status, records = session.run("test")
    assert status["status"] == "ok"
    assert "token=unset host=test-host" in session.lines(records)


def test_no_tests_is_success(session) -> None:
    session.start()
    status, records = session.run("test")
    assert status["status"] == "ok" and status["message"] == "no tests"
    assert [r.payload["result"] for r in records if r.type == "test_progress"] == ["no tests"]


def test_non_executable_script_is_skipped_not_failed(session, fleet_repo) -> None:
    add_tests(fleet_repo, {"T01-a.sh": "echo a"})
    add_tests(fleet_repo, {"T02-notes.sh": "exit 1"}, mode=0o644)
    session.start()
    status, records = session.run("test")
    assert status["status"] == "ok" and status["message"] == "1/1 passed"
    assert "⏭  skipping T02-notes.sh: not executable" in session.lines(records)


def test_script_killed_by_a_signal(session, fleet_repo) -> None:
    add_tests(fleet_repo, {"T01-crash.sh": 'echo before; kill -KILL $$'})
    session.start()
    status, records = session.run("test")
    assert status["status"] == "error"
    assert "❌ T01-crash.sh failed (terminated by SIGKILL)" in session.lines(records)


def test_agent_shutdown_mid_test_reports_it_before_exiting(session, fleet_repo) -> None:
    """systemctl stop while a test script runs: the agent ends the script's process group and the
    dashboard still gets the run's final status (stopped, and why) instead of waiting for ever."""
    add_tests(fleet_repo, {"T01-slow.sh": "echo started; sleep 60; echo never"})
    session.start()
    mark = session.send("test")
    session.dash.wait_message("output", since=mark, where=lambda r: r.payload["line"] == "started", timeout=10)
    assert session.agent.stop() == 0
    status = session.status_of("test", mark, timeout=5).payload
    assert status["status"] == "stopped" and status["message"].startswith("stopped by agent shutdown"), status
    assert "never" not in session.lines(session.dash.messages(since=mark))


def test_without_a_repository_is_an_error_not_success(session, tmp_path) -> None:
    """Issue 13 item 6: nothing was looked at, so Tests must not turn green."""
    session.start(NIXFLEET_REPO_URL=str(tmp_path / "no-such-origin"))
    status, _ = session.run("test")
    assert status["status"] == "error" and "repository not ready" in status["message"]
    hb = session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=10)
    assert hb.payload["update_status"]["tests"]["status"] != "ok"


def test_op_log_is_bounded_by_size_with_a_visible_marker(session, fleet_repo) -> None:
    """Issue 13 item 5: op logs have a size bound (setting op_log_max_mb), not only a count."""
    from pathlib import Path

    add_tests(fleet_repo, {"T01-chatty.sh": "i=0; while [ $i -lt 30000 ]; do echo \"line $i $(printf '%060d' 0)\"; i=$((i+1)); done"})
    session.start(NIXFLEET_OP_LOG_MAX_MB="1")
    status, records = session.run("test", timeout=60)
    assert status["status"] == "ok"
    assert any(line.startswith("line 29999 ") for line in session.lines(records))  # the stream is complete
    logs = sorted((Path(session.agent.env["NIXFLEET_STATE_DIR"]) / "logs").glob("*.log"))
    text = logs[-1].read_text()
    assert logs[-1].stat().st_size <= 1024 * 1024 + 200
    assert "log truncated at 1048576 bytes" in text and "line 29999 " not in text


def test_a_background_grandchild_ends_with_the_test(session, fleet_repo, tmp_path) -> None:
    """Issue 13 item 5: the finished script's process group is ended, also a grandchild holding the pipe."""
    import os

    from support import wait_for

    pidfile = tmp_path / "grandchild.pid"
    add_tests(fleet_repo, {"T01-bg.sh": f"sleep 300 & echo $! > {pidfile}; echo started"})
    session.start()
    status, _ = session.run("test", timeout=30)
    assert status["status"] == "ok"
    pid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except FileNotFoundError:
            return True

    try:
        wait_for(gone, 5, "the background grandchild to be ended")
    finally:
        if not gone():
            os.kill(pid, 9)

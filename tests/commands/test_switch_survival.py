"""A switch is an operation on disk that outlives the agent and is reported exactly once."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from cmd_support import take_request

from support import wait_for

HOST = "test-host"


def _ops(state: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((state / "operations").glob("*.json"))]


def _statuses(dash, command: str = "switch") -> list[dict]:
    return [r.payload for r in dash.messages("status") if r.payload.get("command") == command]


def test_agent_sigkilled_mid_switch_reports_real_result_once_after_restart(session) -> None:
    shims = session.shims
    shims.set("hold", "1")
    shims.set("rebuild_exit", 4)
    session.start()
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    mark = session.send("switch")
    session.dash.wait_message("output", since=mark, where=lambda r: "holding" in r.payload["line"], timeout=10)
    (op,) = _ops(state)
    assert op["command"] == "switch" and op["pid"] and not op["reported"]
    assert len(op["commit"]) == 40 and op["pre_generation"] == op["commit"][:7]
    assert Path(op["log_path"]).is_file()
    offset = state / "operations" / f"{op['id']}.offset"
    wait_for(lambda: offset.exists() and int(offset.read_text()) == Path(op["log_path"]).stat().st_size, 5,
             "the streamed offset to catch up")
    session.agent.kill()  # SIGKILL: no cleanup, no status
    assert not _statuses(session.dash)
    rebuild = shims.calls("nixos-rebuild")[-1]["pid"]
    os.kill(rebuild, 0)  # the switch survived its agent
    first = session.agent
    mark2 = session.dash.mark()
    session.start()  # finds the operation still running and follows it
    assert session.agent.pid != first.pid
    hb = session.dash.wait_message("heartbeat", since=mark2, where=lambda r: r.payload["pending_command"] == "switch")
    assert hb.payload["command_pid"] == op["pid"]
    shims.clear("hold")
    status = session.status_of("switch", mark2, timeout=15).payload
    assert status["status"] == "error" and status["exit_code"] == 4
    lines = session.lines(session.dash.messages(since=mark2))
    assert sum("Agent restarted during switch" in line for line in lines) == 1  # once (it was streamed twice)
    assert any("builder for" in line for line in lines)  # the rest of the log was streamed ...
    assert not any("holding" in line for line in lines)  # ... from where the first agent stopped
    wait_for(lambda: _ops(state)[0]["reported"], 10, "the operation to be marked reported")
    # exactly once: another restart does not report it again
    session.agent.stop()
    mark3 = session.dash.mark()
    session.start()
    session.dash.wait_message("heartbeat", since=mark3, timeout=5)
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
    assert len(_statuses(session.dash)) == 1


def test_switch_finished_while_no_agent_ran_is_reported_and_reregisters(session) -> None:
    shims = session.shims
    shims.set("hold", "1")
    session.start()
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    mark = session.send("switch")
    session.dash.wait_message("output", since=mark, where=lambda r: "holding" in r.payload["line"], timeout=10)
    session.agent.kill()
    shims.clear("hold")
    (op,) = _ops(state)
    wait_for(lambda: Path(op["result_path"]).exists(), 10, "the detached switch to finish")
    mark2 = session.dash.mark()
    session.start()
    status = session.status_of("switch", mark2).payload
    assert status["status"] == "ok" and status["exit_code"] == 0
    lines = session.lines(session.dash.messages(since=mark2))
    assert "switch done" in lines and "✅ Switch completed successfully" in lines
    # a successful switch ends with a new registration (the dashboard's completion signal)
    regs = [r for r in session.dash.messages("register", since=mark2)]
    session.dash.wait_for(lambda: len(session.dash.messages("register", since=mark2)) >= 2, timeout=10)
    assert len(regs) >= 1 and len(_statuses(session.dash)) == 1


def test_stop_during_switch_signals_the_rebuild_not_the_agent(session) -> None:
    session.shims.set("hold", "1")
    session.start()
    agent_pid = session.agent.pid
    mark = session.send("switch")
    session.dash.wait_message("output", since=mark, where=lambda r: "holding" in r.payload["line"], timeout=10)
    session.send("stop")
    status = session.status_of("switch", mark).payload
    assert status["status"] == "stopped" and "SIGTERM" in status["message"], status
    assert session.agent.running() and session.agent.pid == agent_pid


def test_privileged_launcher_request_and_result(session, tmp_path: Path) -> None:
    """The agent side of the privileged channel, against a stand-in for the root unit that follows
    the file contract of docs/architecture.md (consume request.json, write output.log, result.json)."""
    priv = tmp_path / "privileged-root"
    priv.mkdir()
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(priv))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    request = state / "privileged" / "request.json"
    seen: list[dict] = []

    def root_unit() -> None:
        data = take_request(request)
        seen.append(data)
        out = priv / data["id"]
        out.mkdir()
        (out / "output.log").write_text("building the system configuration...\nactivating the configuration...\n")
        release.wait(10)
        tmp = out / "result.tmp"
        tmp.write_text(json.dumps({"id": data["id"], "action": data["action"], "exit_code": 0,
                                   "finished_at": "2026-11-21T00:00:00Z"}))
        tmp.rename(out / "result.json")

    release = threading.Event()
    worker = threading.Thread(target=root_unit)
    worker.start()
    mark = session.send("switch")
    session.dash.wait_message("output", since=mark, where=lambda r: r.payload["line"] == "activating the configuration...")
    stop_mark = session.send("stop")  # root's process: not the agent's to signal, but to ask root to cancel
    stop = session.status_of("stop", stop_mark).payload
    assert stop["status"] == "ok" and "asked the privileged unit to cancel switch" in stop["message"], stop
    assert json.loads((state / "privileged" / "cancel.json").read_text()) == {"id": seen[0]["id"]}
    release.set()  # this stand-in ignores the cancel: root's own result decides the outcome
    status = session.status_of("switch", mark).payload
    records = session.dash.messages(since=mark)
    worker.join()
    assert status["status"] == "ok"
    (req,) = seen
    assert req["action"] == "switch" and req["flake_attr"] == HOST and len(req["commit"]) == 40
    assert oct((state / "privileged").stat().st_mode & 0o777) == "0o700"
    assert "activating the configuration..." in session.lines(records)


def test_home_manager_boots_the_agent_out_mid_switch(session) -> None:
    """macOS: activation runs `launchctl bootout` on the agent; the switch must finish anyway and
    the agent launchd starts next must report it (upstream P1920)."""
    session.start(NIXFLEET_PLATFORM="home-manager")
    first = session.agent
    session.shims.set("bootout_pid", first.pid)
    mark = session.send("switch")
    first.wait(15)  # SIGTERM from the "bootout": a graceful stop, no status for the unfinished switch
    assert not _statuses(session.dash)
    session.shims.clear("bootout_pid")
    mark2 = session.dash.mark()
    session.start(NIXFLEET_PLATFORM="home-manager")  # launchd bootstraps the agent again
    status = session.status_of("switch", mark2).payload
    assert status["status"] == "ok", status
    lines = session.lines(session.dash.messages(since=mark))
    assert "after bootout 2" in lines and "Activation finished" in lines
    assert len(_statuses(session.dash)) == 1


def test_agent_stopped_mid_switch_hands_over_every_line_exactly_once(session) -> None:
    """systemctl stop / restart while a switch streams: the next agent continues at the exact line
    where the old one stopped, and a line half written at that moment arrives whole, once."""
    shims = session.shims
    shims.set("hold", "1")
    shims.set("partial", "straddling line")
    shims.set("rebuild_lines", 5)
    session.start()
    mark = session.send("switch")
    session.dash.wait_message("output", since=mark, where=lambda r: "holding" in r.payload["line"], timeout=10)
    assert session.agent.stop() == 0  # SIGTERM right after the line arrived: no time to save lazily
    shims.clear("hold")
    session.start()
    status = session.status_of("switch", mark, timeout=15).payload
    assert status["status"] == "ok", status
    lines = [line for line in session.lines(session.dash.messages(since=mark))
             if "holding" in line or "derivations" in line or "straddling" in line or line == "switch done"]
    assert lines == [*(f"these 0 derivations will be built (line {i})" for i in range(5)),
                     "nixos-rebuild: holding (test gate)",
                     "straddling line (first half, second half)",
                     "switch done"], lines

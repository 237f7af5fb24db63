"""pull-switch, update/bump-flake, force-update/force-rebuild: messages in order, argv as expected."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from cmd_support import kinds, take_request

from support import git, wait_for

HOST = "test-host"


def _new_commit(repo: Path) -> str:
    (repo / "hosts" / HOST / "configuration.nix").write_text("{ }\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "change host config")
    return git(repo, "rev-parse", "HEAD")


def test_pull_switch_pulls_then_switches_the_new_commit(session, fleet_repo) -> None:
    session.start()
    head = _new_commit(fleet_repo)
    status, records = session.run("pull-switch")
    assert status["status"] == "ok" and status["generation"] == head[:7]
    assert kinds(records)[0] == "progress:pull:in_progress"
    order = [k for k in kinds(records) if k.startswith("progress")]
    assert order == ["progress:pull:in_progress", "progress:pull:complete", "progress:system:in_progress",
                     "progress:system:complete"]
    lines = session.lines(records)
    assert any(l.startswith(("✅ Pull+Switch completed", "⚠️  Switch OK")) for l in lines)
    assert session.shims.calls("nixos-rebuild")[-1]["argv"][0] == "switch"


def test_pull_switch_stops_when_the_pull_fails(session, fleet_repo, tmp_path: Path) -> None:
    session.start()
    fleet_repo.rename(tmp_path / "origin-gone")  # the remote disappears
    status, records = session.run("pull-switch")
    assert status["status"] == "error"
    assert [k for k in kinds(records) if k.startswith("progress")] == ["progress:pull:in_progress", "progress:pull:error"]
    assert not session.shims.calls("nixos-rebuild")


def _add_agent_input(repo: Path) -> None:
    """Give the fleet's lock file the input bump-flake and force-update move by default: the
    README's name for this flake, `nixfleet-agent` (the modules' agentInput default)."""
    lock = {"nodes": {"nixfleet-agent": {"locked": {"rev": "0" * 40, "type": "github"}},
                      "root": {"inputs": {"nixfleet-agent": "nixfleet-agent"}}}, "root": "root", "version": 7}
    (repo / "flake.lock").write_text(json.dumps(lock, indent=2) + "\n")
    git(repo, "commit", "-q", "-am", "lock the nixfleet-agent input")


def test_force_rebuild_and_force_update_disable_the_negative_cache(session, fleet_repo) -> None:
    _add_agent_input(fleet_repo)
    session.start()
    mark = session.dash.mark()
    status, records = session.run("force-rebuild")
    assert status["status"] == "ok"
    argv = session.shims.calls("nixos-rebuild")[-1]["argv"]
    assert argv[:2] == ["switch", "--flake"] and argv[-3:] == ["--option", "narinfo-cache-negative-ttl", "0"]
    session.wait_reregistered(mark)
    status, records = session.run("force-update", timeout=60)
    assert status["status"] == "ok" and status["message"] == "force update complete", status
    lines = session.lines(records)
    assert [l for l in lines if l.startswith("━━━")] == ["━━━ Step 1/3: Git pull ━━━",
                                                       "━━━ Step 2/3: nix flake update nixfleet-agent ━━━",
                                                       "━━━ Step 3/3: Rebuild ━━━"]
    assert session.shims.calls("nix")[-1]["argv"][-4:] == ["flake", "lock", "--update-input", "nixfleet-agent"]


def test_update_and_bump_flake_report_the_flake_update(session, fleet_repo) -> None:
    session.start()
    status, records = session.run("update", timeout=60)
    assert status["status"] == "ok", (status, session.lines(records))
    assert "up to date" in status["message"]
    assert any(c["argv"][-2:] == ["flake", "update"] for c in session.shims.calls("nix"))  # every input
    assert all(r.payload["command"] == "update" for r in records if r.type == "output")
    # bump-flake moves only the agent's input; a fleet flake without it gets an error naming it
    status, records = session.run("bump-flake", timeout=60)
    assert status["status"] == "error"
    assert any("flake.lock has no input 'nixfleet-agent' (it has: none): set services.nixfleet-agent.agentInput "
               "(agent_input) to the name your fleet flake gives this flake" in line
               for line in session.lines(records)), session.lines(records)
    _add_agent_input(fleet_repo)
    status, records = session.run("bump-flake", timeout=60)
    assert status["status"] == "ok", (status, session.lines(records))
    assert session.shims.calls("nix")[-1]["argv"][-4:] == ["flake", "lock", "--update-input", "nixfleet-agent"]
    assert all(r.payload["command"] == "bump-flake" for r in records if r.type == "output")


def test_privileged_reboot_goes_through_the_root_unit(session, tmp_path: Path) -> None:
    priv = tmp_path / "privileged-root"
    priv.mkdir()
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(priv))
    request = Path(session.agent.env["NIXFLEET_STATE_DIR"]) / "privileged" / "request.json"
    seen: list[dict] = []

    def root_unit() -> None:
        data = take_request(request)
        seen.append(data)
        (priv / data["id"]).mkdir()
        (priv / data["id"] / "result.json").write_text(json.dumps({"id": data["id"], "action": "reboot",
                                                                   "exit_code": 1, "error": "reboot: denied"}))

    worker = threading.Thread(target=root_unit)
    worker.start()
    status, _ = session.run("reboot", timeout=15)
    worker.join()
    assert seen[0]["action"] == "reboot"
    assert status["status"] == "error" and "reboot: denied" in status["message"]
    assert not session.shims.calls("systemctl") and not session.shims.calls("sudo")


def test_stop_ends_a_push_that_hangs(session, fleet_repo, tmp_path: Path) -> None:
    """A push waiting on a stuck remote is a tracked child like any other: `stop` ends it at once
    (instead of after git_timeout) and the command reports `stopped`, the remote untouched."""
    _add_agent_input(fleet_repo)
    git(fleet_repo, "config", "receive.denyCurrentBranch", "ignore")
    reached = tmp_path / "push-reached-the-remote"
    hook = fleet_repo / ".git" / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\ntouch {reached}\nsleep 120\n")
    hook.chmod(0o755)
    before = git(fleet_repo, "rev-parse", "HEAD")
    session.shims.set("lock_rev", "1" * 40)
    session.start(NIXFLEET_GIT_TIMEOUT="300")
    mark = session.send("bump-flake")
    wait_for(reached.exists, 30, "the push to reach the remote's hook")
    stop = session.status_of("stop", session.send("stop")).payload
    assert stop["status"] == "ok" and "SIGTERM to bump-flake" in stop["message"], stop
    status = session.status_of("bump-flake", mark, timeout=30).payload
    assert status["status"] == "stopped", status
    assert git(fleet_repo, "rev-parse", "HEAD") == before

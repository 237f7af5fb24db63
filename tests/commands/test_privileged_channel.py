"""The agent's privileged launcher against the real root side (``nixfleet-agent-privileged``),
run the way the path unit runs it whenever ``request.json`` appears."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from cmd_support import SHIMS
from support import git, wait_for

HOST = "test-host"


class RootUnit:
    """Plays systemd's path unit: start the root oneshot each time the request file exists."""

    def __init__(self, state: Path, out_dir: Path, env: dict[str, str], repo: Path | None = None) -> None:
        self.request = state / "privileged" / "request.json"
        self.state, self.out_dir, self.env = state, out_dir, env
        self.repo = repo or state / "repo"
        self.runs: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            if self.request.exists():
                proc = subprocess.run(
                    [sys.executable, "-m", "nixfleet_agent.privileged", "--request", str(self.request),
                     "--repo", str(self.repo), "--out-dir", str(self.out_dir),
                     "--nixos-rebuild", str(SHIMS / "nixos-rebuild"), "--systemctl", str(SHIMS / "systemctl")],
                    env=self.env, capture_output=True, timeout=60, check=False)
                self.runs.append(proc.returncode)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_switch_and_rollback_through_the_root_unit(session, tmp_path: Path) -> None:
    out_dir = tmp_path / "privileged-root"
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(out_dir))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    root = RootUnit(state, out_dir, session.agent.env)
    try:
        mark = session.dash.mark()
        status, records = session.run("switch", timeout=30)
        assert status["status"] == "ok", (status, session.lines(records))
        head = git(state / "repo", "rev-parse", "HEAD")
        call = session.shims.calls("nixos-rebuild")[-1]
        assert call["argv"][0] == "switch" and call["argv"][-1].endswith(f"?rev={head}#{HOST}")
        assert "activating the configuration..." in session.lines(records)
        assert not session.shims.calls("sudo")  # no sudo anywhere on this path
        session.wait_reregistered(mark)
        session.shims.set("rebuild_exit", 5)
        status, records = session.run("rollback", timeout=30)
        assert status["status"] == "error" and status["exit_code"] == 5, status
        assert session.shims.calls("nixos-rebuild")[-1]["argv"] == ["switch", "--rollback"]
        wait_for(lambda: len(root.runs) == 2, 5, "two root runs")
    finally:
        root.close()


def test_force_update_builds_the_updated_lock_through_the_root_unit(session, fleet_repo, tmp_path: Path) -> None:
    """Root builds a commit, never the work tree: force-update commits the new lock in the agent's
    clone (not pushed) and the root unit builds that commit with the negative cache off."""
    lock = {"nodes": {"nixfleet-agent": {"locked": {"rev": "0" * 40, "type": "github"}},
                      "root": {"inputs": {"nixfleet-agent": "nixfleet-agent"}}}, "root": "root", "version": 7}
    (fleet_repo / "flake.lock").write_text(json.dumps(lock, indent=2) + "\n")
    git(fleet_repo, "commit", "-q", "-am", "lock the nixfleet-agent input")
    origin_head = git(fleet_repo, "rev-parse", "HEAD")
    out_dir = tmp_path / "privileged-root"
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(out_dir))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    clone = state / "repo"
    root = RootUnit(state, out_dir, session.agent.env)
    try:
        session.shims.set("lock_rev", "1" * 40)
        mark = session.dash.mark()
        status, records = session.run("force-update", timeout=60)
        assert status["status"] == "ok", (status, session.lines(records))
        head = git(clone, "rev-parse", "HEAD")
        assert head != origin_head and git(clone, "rev-parse", "HEAD~1") == origin_head
        built = json.loads(git(clone, "show", f"{head}:flake.lock"))
        assert built["nodes"]["nixfleet-agent"]["locked"]["rev"] == "1" * 40
        argv = session.shims.calls("nixos-rebuild")[-1]["argv"]
        assert argv[:3] == ["switch", "--flake", f"git+file://{clone}?rev={head}#{HOST}"], argv
        assert argv[3:] == ["--option", "narinfo-cache-negative-ttl", "0"], argv
        assert any(f"locally as {head[:7]} (not pushed)" in line for line in session.lines(records))
        assert git(fleet_repo, "rev-parse", "HEAD") == origin_head  # nothing published
        # force-rebuild: the same option, on the commit as it is
        session.wait_reregistered(mark)
        mark = session.dash.mark()
        session.run("force-rebuild", timeout=30)
        argv = session.shims.calls("nixos-rebuild")[-1]["argv"]
        assert argv[-3:] == ["--option", "narinfo-cache-negative-ttl", "0"], argv
        # and a plain switch pulls: the local commit is gone, origin's lock is built again
        session.wait_reregistered(mark)
        session.run("pull-switch", timeout=30)
        assert git(clone, "rev-parse", "HEAD") == origin_head
        assert "--option" not in session.shims.calls("nixos-rebuild")[-1]["argv"]
    finally:
        root.close()


def test_a_request_the_root_unit_refuses_is_reported_with_its_reason(session, tmp_path: Path) -> None:
    """The root side checks the commit against *its* view of the clone; when it refuses, the
    dashboard gets the refusal (field and reason) as the switch's error, not a silent hang."""
    out_dir = tmp_path / "privileged-root"
    elsewhere = tmp_path / "other-clone"
    git(tmp_path, "init", "-q", str(elsewhere))
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(out_dir))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    root = RootUnit(state, out_dir, session.agent.env, repo=elsewhere)
    try:
        status, records = session.run("switch", timeout=30)
        head = git(state / "repo", "rev-parse", "HEAD")
        assert status["status"] == "error" and status["exit_code"] == 2, status
        assert status["message"] == f"commit: {head} is not a commit in {elsewhere}", status
        assert f"commit: {head} is not a commit in {elsewhere}" in "\n".join(session.lines(records))
        assert not session.shims.calls("nixos-rebuild")  # nothing was built
        wait_for(lambda: root.runs == [1], 10, "the root unit to exit (1: its action failed)")
    finally:
        root.close()

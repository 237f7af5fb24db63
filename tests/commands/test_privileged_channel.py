"""The agent's privileged launcher against the real root side (``nixfleet-agent-privileged``), run
the way the path unit runs it whenever ``request.json`` appears, with root's own clone of the
fleet repository: root builds only what the fleet published, and a refusal reaches the dashboard
as the command's error while the agent stays usable."""

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

    def __init__(self, state: Path, tmp: Path, origin: Path, env: dict[str, str]) -> None:
        self.request = state / "privileged" / "request.json"
        self.out_dir = tmp / "privileged-root"
        self.root_state = tmp / "root-state"
        self.clone = self.root_state / "repo"
        self.argv = [sys.executable, "-m", "nixfleet_agent.root", "--request", str(self.request),
                     "--repo-url", str(origin), "--branch", "main", "--flake-attr", HOST,
                     "--out-dir", str(self.out_dir), "--state-dir", str(self.root_state),
                     "--nixos-rebuild", str(SHIMS / "nixos-rebuild"), "--systemctl", str(SHIMS / "systemctl"),
                     "--nix", str(SHIMS / "nix")]
        self.env = env
        self.runs: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            if self.request.exists():
                proc = subprocess.run(self.argv, env=self.env, capture_output=True, timeout=60, check=False)
                self.runs.append(proc.returncode)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def start(session, fleet_repo: Path, tmp_path: Path) -> tuple[Path, RootUnit]:
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(tmp_path / "privileged-root"))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    return state, RootUnit(state, tmp_path, fleet_repo, session.agent.env)


def test_switch_and_rollback_through_the_root_unit(session, fleet_repo, tmp_path: Path) -> None:
    state, root = start(session, fleet_repo, tmp_path)
    try:
        mark = session.dash.mark()
        status, records = session.run("switch", timeout=30)
        assert status["status"] == "ok", (status, session.lines(records))
        head = git(state / "repo", "rev-parse", "HEAD")
        call = session.shims.calls("nixos-rebuild")[-1]
        assert call["argv"][:2] == ["switch", "--flake"], call
        assert call["argv"][2] == f"git+file://{root.clone}?ref=main&rev={head}#{HOST}", call  # root's clone
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


def test_a_commit_the_agent_authored_is_refused_with_roots_reason(session, fleet_repo, tmp_path: Path) -> None:
    """The attack of issue 11: a commit in the agent's clone that no remote branch has (here one
    adding an SSH key for root). Root refuses it, the dashboard hears why, nothing is built, and
    the next published commit switches as usual."""
    state, root = start(session, fleet_repo, tmp_path)
    clone = state / "repo"
    try:
        (clone / "root-key.nix").write_text('{ users.users.root.openssh.authorizedKeys.keys = [ "ssh-ed25519 X" ]; }\n')
        git(clone, "add", "root-key.nix")
        git(clone, "commit", "-q", "-m", "let me in")
        evil = git(clone, "rev-parse", "HEAD")
        status, records = session.run("switch", timeout=30)
        assert status["status"] == "error" and status["exit_code"] == 2, status
        message = str(status["message"])
        assert message.startswith(f"published: commit {evil} is not in main of {fleet_repo}"), message
        assert "root builds only published commits" in message
        assert any(message in line for line in session.lines(records))
        assert not session.shims.calls("nixos-rebuild")  # nothing was built
        wait_for(lambda: root.runs == [1], 10, "the root unit to exit (1: its action failed)")
        # the agent stays usable: the published head switches
        published = git(fleet_repo, "rev-parse", "HEAD")
        status, records = session.run("pull-switch", timeout=30)
        assert status["status"] == "ok", (status, session.lines(records))
        assert session.shims.calls("nixos-rebuild")[-1]["argv"][2].endswith(f"rev={published}#{HOST}")
    finally:
        root.close()


def test_a_commit_force_pushed_away_is_refused_and_the_new_head_accepted(session, fleet_repo,
                                                                          tmp_path: Path) -> None:
    (fleet_repo / "bad.nix").write_text("{ bad = true; }\n")
    git(fleet_repo, "add", "bad.nix")
    git(fleet_repo, "commit", "-q", "-m", "a mistake")
    state, root = start(session, fleet_repo, tmp_path)
    clone = state / "repo"
    try:
        removed = git(clone, "rev-parse", "HEAD")
        mark = session.dash.mark()
        status, _ = session.run("switch", timeout=30)  # published when asked: root fetched and built it
        assert status["status"] == "ok", status
        session.wait_reregistered(mark)
        git(fleet_repo, "reset", "-q", "--hard", "HEAD~1")
        (fleet_repo / "good.nix").write_text("{ good = true; }\n")
        git(fleet_repo, "add", "good.nix")
        git(fleet_repo, "commit", "-q", "-m", "the fix (force-pushed over the mistake)")
        new_head = git(fleet_repo, "rev-parse", "HEAD")
        status, _ = session.run("switch", timeout=30)  # the agent's clone still holds the removed commit
        assert status["status"] == "error", status
        assert str(status["message"]).startswith(f"published: commit {removed} is no longer on (force-pushed away "
                                                 f"from) main"), status
        status, records = session.run("pull-switch", timeout=30)
        assert status["status"] == "ok", (status, session.lines(records))
        assert session.shims.calls("nixos-rebuild")[-1]["argv"][2].endswith(f"rev={new_head}#{HOST}")
    finally:
        root.close()


def test_force_update_has_root_refresh_the_lock_of_the_published_commit(session, fleet_repo,
                                                                         tmp_path: Path) -> None:
    """Root builds only published commits: force-update no longer commits in the agent's clone;
    root refreshes the agent's input in a throwaway work tree of the pulled, verified commit,
    commits that in its own clone and builds it with the negative cache off."""
    lock = {"nodes": {"nixfleet-agent": {"locked": {"rev": "0" * 40, "type": "github"}},
                      "root": {"inputs": {"nixfleet-agent": "nixfleet-agent"}}}, "root": "root", "version": 7}
    (fleet_repo / "flake.lock").write_text(json.dumps(lock, indent=2) + "\n")
    git(fleet_repo, "commit", "-q", "-am", "lock the nixfleet-agent input")
    origin_head = git(fleet_repo, "rev-parse", "HEAD")
    state, root = start(session, fleet_repo, tmp_path)
    clone = state / "repo"
    try:
        session.shims.set("lock_rev", "1" * 40)
        mark = session.dash.mark()
        status, records = session.run("force-update", timeout=60)
        assert status["status"] == "ok", (status, session.lines(records))
        assert git(clone, "rev-parse", "HEAD") == origin_head  # the agent authored nothing
        lock_call = session.shims.calls("nix")[-1]
        assert "--update-input" in lock_call["argv"] and "nixfleet-agent" in lock_call["argv"], lock_call
        assert lock_call["cwd"].startswith(str(root.root_state / "work")), lock_call  # root's work tree
        argv = session.shims.calls("nixos-rebuild")[-1]["argv"]
        built = argv[2].split("rev=")[1].split("#")[0]
        assert argv[2] == f"git+file://{root.clone}?ref=nixfleet-lock-refresh&rev={built}#{HOST}", argv
        assert argv[3:] == ["--option", "narinfo-cache-negative-ttl", "0"], argv
        assert git(root.clone, "rev-parse", f"{built}~1") == origin_head
        assert json.loads(git(root.clone, "show", f"{built}:flake.lock"))["nodes"]["nixfleet-agent"]["locked"]["rev"] \
            == "1" * 40
        assert git(root.clone, "log", "-1", "--format=%an", built) == "nixfleet-agent-privileged"
        assert git(fleet_repo, "rev-parse", "HEAD") == origin_head  # nothing published
        assert not list((root.root_state / "work").iterdir())  # the work tree is gone
        # force-rebuild: the same option, on the published commit as it is
        session.wait_reregistered(mark)
        session.run("force-rebuild", timeout=30)
        argv = session.shims.calls("nixos-rebuild")[-1]["argv"]
        assert argv[2].endswith(f"ref=main&rev={origin_head}#{HOST}") and argv[-3:] == [
            "--option", "narinfo-cache-negative-ttl", "0"], argv
    finally:
        root.close()


def test_root_unit_dying_without_a_result_ends_the_switch_and_frees_the_agent(session, tmp_path: Path) -> None:
    """Issue 13 item 1: the root side consumed the request, wrote some output and died (no
    result.json ever). The agent reports a final error naming the unit's state and takes the next
    command, also after a restart."""
    from cmd_support import take_request

    out_dir = tmp_path / "privileged-root"
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(out_dir))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    mark = session.send("switch")
    request = take_request(state / "privileged" / "request.json")
    (out_dir / request["id"]).mkdir(parents=True)
    (out_dir / request["id"] / "output.log").write_text("building the system configuration...\n")
    session.dash.wait_message("output", since=mark, where=lambda r: "building the system" in r.payload["line"])
    session.shims.set("unit_state", "ActiveState=failed\nResult=signal")  # root's oneshot was killed
    status = session.status_of("switch", mark, timeout=20).payload
    assert status["status"] == "error"
    assert "ended without a result" in status["message"] and "Result=signal" in status["message"]
    status, _ = session.run("refresh-lock")  # not busy any more
    assert status["status"] == "ok"
    session.agent.stop()
    mark = session.dash.mark()
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(out_dir))
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=5)
    assert not [r for r in session.dash.messages("status", since=mark) if r.payload.get("command") == "switch"]

"""The agent's privileged launcher against the real root side (``nixfleet-agent-privileged``),
run the way the path unit runs it whenever ``request.json`` appears."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from cmd_support import SHIMS
from support import git, wait_for

HOST = "test-host"


class RootUnit:
    """Plays systemd's path unit: start the root oneshot each time the request file exists."""

    def __init__(self, state: Path, out_dir: Path, env: dict[str, str]) -> None:
        self.request = state / "privileged" / "request.json"
        self.state, self.out_dir, self.env = state, out_dir, env
        self.runs: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            if self.request.exists():
                proc = subprocess.run(
                    [sys.executable, "-m", "nixfleet_agent.privileged", "--request", str(self.request),
                     "--repo", str(self.state / "repo"), "--out-dir", str(self.out_dir),
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

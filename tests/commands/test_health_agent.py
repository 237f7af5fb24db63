"""Health-gated switches end to end: a real agent, the reference dashboard and the real root program
(run the way the path unit runs it) with stand-in generations that are profile symlink trees
(tests/privileged/health_support.py). The agent confirms its new registration, a failing check
reaches the dashboard as one final status saying what failed and that the host was rolled back,
the bad commit shows in heartbeats and ``nixfleet-agent status`` and is refused until force, and an
agent killed during the grace period changes nothing: root rolls back alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cmd_support import SHIMS
from support import git, run_cli, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "privileged"))
from health_support import Generations  # noqa: E402

HOST = "test-host"
GRACE = 8


class RootUnit:
    """Plays the path unit: the root program each time the request exists, with [health]."""

    def __init__(self, state: Path, tmp: Path, origin: Path, env: dict[str, str], gens: Generations,
                 reconnect: bool) -> None:
        self.request = state / "privileged" / "request.json"
        self.out_dir = tmp / "privileged-root"
        config = tmp / "root-agent.toml"
        config.write_text(f"[health]\ngrace_period = {GRACE}\nno_failed_units = false\n"
                          f"require_reconnect = {str(reconnect).lower()}\n{gens.healthy_check()}")
        config.chmod(0o644)
        self.argv = [sys.executable, "-m", "nixfleet_agent.root", "--config", str(config),
                     "--request", str(self.request), "--repo-url", str(origin), "--branch", "main",
                     "--flake-attr", HOST, "--out-dir", str(self.out_dir), "--state-dir", str(tmp / "root-state"),
                     "--nixos-rebuild", str(tmp / "bin" / "nixos-rebuild"), "--systemctl", str(SHIMS / "systemctl"),
                     "--nix", str(SHIMS / "nix"), "--nix-env", str(gens.nix_env),
                     "--system-profile", str(gens.profile), "--current-system", str(gens.current_link),
                     "--health-interval", "0.2"]
        self.env = dict(env)
        self.gens = gens
        self.next = "good"
        self.build_sleep = "0"
        self.runs: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            if self.request.exists():
                env = {**self.env, **self.gens.variables(self.next), "HEALTH_BUILD_SLEEP": self.build_sleep,
                       "SHIM_CALLS": str(self.gens.store.parent / "calls")}
                proc = subprocess.run(self.argv, env=env, capture_output=True, timeout=120, check=False)
                self.runs.append(proc.returncode)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def gated(session, fleet_repo: Path, tmp_path: Path, request: pytest.FixtureRequest):
    reconnect = getattr(request, "param", True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gens = Generations(tmp_path, bin_dir)
    session.start(NIXFLEET_SWITCH_LAUNCHER="privileged", NIXFLEET_PRIVILEGED_DIR=str(tmp_path / "privileged-root"))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    root = RootUnit(state, tmp_path, fleet_repo, session.agent.env, gens, reconnect)
    yield session, root, state
    root.close()


def test_switch_waits_for_the_agents_new_registration(gated) -> None:
    session, root, state = gated
    mark = session.dash.mark()
    status, records = session.run("switch", timeout=60)
    assert status["status"] == "ok", (status, session.lines(records))
    lines = session.lines(records)
    assert any("waiting for the agent to register" in line for line in lines), lines
    # the agent registered again *during* the switch (before its final status), and told root so
    registers = session.dash.messages("register", since=mark)
    assert registers and registers[0].index < session.status_of("switch", mark).index
    assert any("confirmed to root" in line for line in lines), lines
    assert root.gens.running() == "good gen2"


def test_failing_check_rolls_back_says_so_and_the_commit_is_refused_until_force(gated) -> None:
    session, root, state = gated
    root.next = "bad"
    status, records = session.run("switch", timeout=60)
    head = git(state / "repo", "rev-parse", "HEAD")
    assert status["status"] == "error", status
    message = str(status["message"])
    assert message.startswith("health: command /bin/sh -c grep") and "rolled back to the previous generation" in message
    assert f"commit {head[:7]} is refused" in message
    assert any(line.startswith("nixfleet-agent-privileged: health: FAIL") for line in session.lines(records))
    assert root.gens.running() == "good gen1"
    # the dashboard's heartbeat carries the list; `nixfleet-agent status` shows it
    beat = session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=15,
                                     where=lambda r: r.payload.get("bad_commits"))
    assert beat.payload["bad_commits"] == [head]
    assert beat.payload["update_status"]["system"]["status"] == "error"
    assert beat.payload["update_status"]["tests"]["message"].startswith("Health checks failed: command")
    shown = run_cli(["status"], {"NIXFLEET_STATE_DIR": str(state)})
    assert f"bad commit (refused until a newer commit or force): {head}" in shown.stdout, shown.stdout
    # the same commit again: root refuses it before building
    status, _ = session.run("switch", timeout=30)
    assert status["status"] == "error" and status["exit_code"] == 2
    assert str(status["message"]).startswith(f"bad_commit: commit {head} failed its health checks"), status
    # force-rebuild is the dashboard's force: built and checked again (now good), taken off the list
    root.next = "good"
    status, records = session.run("force-rebuild", timeout=60)
    assert status["status"] == "ok", (status, session.lines(records))
    assert root.gens.running().startswith("good gen")
    wait_for(lambda: not json.loads((state / "health" / "bad-commits.json").read_text())["commits"], 10,
             "the agent's copy of the bad list to empty")


def test_an_agent_killed_during_the_grace_period_changes_nothing(gated) -> None:
    """Root decides alone: the agent dies after activation and never confirms; root rolls back."""
    session, root, state = gated
    root.build_sleep = "2"  # the agent dies while root builds, so it never confirms
    mark = session.send("switch")
    session.dash.wait_message("output", since=mark, timeout=30,
                              where=lambda r: "stand-in nixos-rebuild" in r.payload["line"])
    os.kill(session.agent.pid, signal.SIGKILL)
    wait_for(lambda: root.runs, GRACE + 30, "the root program to finish")
    assert root.runs == [1] and root.gens.running() == "good gen1"
    results = [json.loads(p.read_text()) for p in root.out_dir.glob("*/result.json")]
    assert [(r["rolled_back"], r["failed_checks"][0].split(":")[0]) for r in results] == [(True, "reconnect")]


# ----- Home Manager: the agent decides -------------------------------------------------------------------

def _hm_generations(tmp_path: Path, shims, count: int) -> None:
    profiles = tmp_path / ".local/state/nix/profiles"
    profiles.mkdir(parents=True)
    for n in range(1, count + 1):
        gen = tmp_path / "store" / f"hm-{n}"
        gen.mkdir(parents=True)
        act = gen / "activate"
        act.write_text(f'#!/bin/sh\necho "{n}" >> "{shims.dir}/activated"\necho "Activating generation {n}"\n')
        act.chmod(0o755)
        (profiles / f"home-manager-{n}-link").symlink_to(gen)
    (profiles / "home-manager").symlink_to(f"home-manager-{count}-link")  # the switch made generation 11


def _hm_config(tmp_path: Path, check: str, reconnect: bool) -> str:
    config = tmp_path / "hm-agent.toml"
    config.write_text(f"[health]\ngrace_period = 5\nno_failed_units = false\nrequire_reconnect = {str(reconnect).lower()}\n"
                      f'[[health.commands]]\nargv = ["/bin/sh", "-c", "{check}"]\n')
    return str(config)


def _counters(metrics: Path) -> dict[str, float]:
    """The health counters of the agent's Prometheus text file, read by prometheus_client's parser."""
    parser = pytest.importorskip("prometheus_client.parser")
    try:
        text = (metrics / "nixfleet_agent.prom").read_text()
    except FileNotFoundError:
        return {}
    return {s.name: s.value for f in parser.text_string_to_metric_families(text) for s in f.samples
            if s.name in ("nixfleet_agent_health_check_failures_total", "nixfleet_agent_rollbacks_total")}


def test_home_manager_rolls_back_to_the_previous_generation_by_number(session, tmp_path: Path) -> None:
    _hm_generations(tmp_path, session.shims, 11)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    session.start(NIXFLEET_PLATFORM="home-manager", NIXFLEET_CONFIG=_hm_config(tmp_path, "exit 3", False),
                  NIXFLEET_METRICS_TEXTFILE_DIRECTORY=str(metrics))
    state = Path(session.agent.env["NIXFLEET_STATE_DIR"])
    status, records = session.run("switch", timeout=30)
    assert status["status"] == "error", status
    assert str(status["message"]).startswith("health: command /bin/sh -c exit 3: exit 3; rolled back to Home "
                                             "Manager generation 10;"), status
    assert (session.shims.dir / "activated").read_text().split() == ["10"]  # by name, 9 would be "previous"
    assert "Activating generation 10" in session.lines(records)
    wait_for(lambda: _counters(metrics) == {"nixfleet_agent_health_check_failures_total": 1.0,
                                            "nixfleet_agent_rollbacks_total": 1.0}, 15,
             "the metrics file to count the failed check and the rollback")
    head = git(state / "repo", "rev-parse", "HEAD")
    status, _ = session.run("switch", timeout=30)  # refused by the agent itself: nothing activated
    assert status["exit_code"] == 2 and str(status["message"]).startswith(f"commit {head} failed its health checks")
    assert len(session.shims.calls("home-manager")) == 1
    status, _ = session.run("force-rebuild", timeout=30)  # force: switched and checked again
    assert len(session.shims.calls("home-manager")) == 2 and "rolled back" in str(status["message"])


def test_home_manager_healthy_switch_reregisters_and_passes(session, tmp_path: Path) -> None:
    _hm_generations(tmp_path, session.shims, 2)
    session.start(NIXFLEET_PLATFORM="home-manager", NIXFLEET_CONFIG=_hm_config(tmp_path, "exit 0", True))
    mark = session.dash.mark()
    status, records = session.run("switch", timeout=30)
    assert status["status"] == "ok", (status, session.lines(records))
    assert any(line.startswith("health: all checks passed") for line in session.lines(records))
    assert session.dash.messages("register", since=mark)[0].index < session.status_of("switch", mark).index
    assert not (session.shims.dir / "activated").exists()


def test_home_manager_agent_killed_during_its_checks_decides_again_after_the_restart(session, tmp_path: Path) -> None:
    """Home Manager has no root side: the switch's record stays unreported while the agent checks,
    so the agent that comes back (systemd/launchd restart it) runs the checks again and rolls back."""
    _hm_generations(tmp_path, session.shims, 3)
    env = dict(NIXFLEET_PLATFORM="home-manager", NIXFLEET_CONFIG=_hm_config(tmp_path, "exit 3", False))
    session.start(**env)
    mark = session.send("switch")
    session.dash.wait_message("output", since=mark, timeout=30,
                              where=lambda r: "Health checks" in str(r.payload.get("line", "")))
    os.kill(session.agent.pid, signal.SIGKILL)
    session.agent.proc.wait(10)
    assert not (session.shims.dir / "activated").exists()
    session.start(**env)
    status = session.dash.wait_message("status", since=mark, timeout=60,
                                       where=lambda r: r.payload.get("command") == "switch").payload
    assert status["status"] == "error", status
    assert "rolled back to Home Manager generation 2" in str(status["message"]), status
    assert (session.shims.dir / "activated").read_text().split() == ["2"]


def test_home_manager_agent_restarted_during_its_checks_still_ignores_units_failed_before(
        session, tmp_path: Path) -> None:
    """The user units that had failed before the switch are kept in the operation's journal record:
    the agent that comes back after a kill during its checks does not count them against the new
    generation (they were kept in memory only, so the restarted agent rolled a healthy switch back)."""
    _hm_generations(tmp_path, session.shims, 3)
    # the checks run with a plain environment (PATH, locale, the user bus): a systemctl first on PATH
    # whose user manager has one unit failed since before the switch, the shim for everything else
    bin_dir = tmp_path / "failed-bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text('#!/bin/sh\ncase " $* " in *" list-units "*)\n'
                                       '  echo "old.service loaded failed failed An older failure"; exit 0;;\n'
                                       f'esac\nexec {SHIMS / "systemctl"} "$@"\n')
    (bin_dir / "systemctl").chmod(0o755)
    healthy = tmp_path / "healthy"
    config = tmp_path / "hm-agent.toml"
    config.write_text("[health]\ngrace_period = 20\nrequire_reconnect = false\n"
                      f'[[health.commands]]\nargv = ["/bin/sh", "-c", "test -e {healthy}"]\n')
    env = dict(NIXFLEET_PLATFORM="home-manager", NIXFLEET_CONFIG=str(config),
               PATH=f"{bin_dir}:{session.shims.env()['PATH']}")
    session.start(**env)
    mark = session.send("switch")
    session.dash.wait_message("output", since=mark, timeout=30, where=lambda r: str(r.payload.get("line", "")).startswith(
        "health: already failed before the switch, not counted: old.service"))
    os.kill(session.agent.pid, signal.SIGKILL)
    session.agent.proc.wait(10)
    healthy.touch()
    again = session.dash.mark()
    session.start(**env)
    status = session.dash.wait_message("status", since=mark, timeout=60,
                                       where=lambda r: r.payload.get("command") == "switch").payload
    assert status["status"] == "ok", status
    assert not (session.shims.dir / "activated").exists()
    lines = [str(r.payload.get("line", "")) for r in session.dash.messages("output", since=again)]
    assert "health: already failed before the switch, not counted: old.service" in lines, lines

"""modules/watchdog.sh, the macOS launchd watchdog, against a fake `launchctl` on PATH.

Every branch a Mac can be in: agent not loaded (bootstrap), loaded but stopped (kickstart),
running but hung (kickstart -k), running and healthy (nothing), plus failures of each action and
bad arguments. Run under both /bin/sh (dash here, like macOS' POSIX sh) and bash. The same script
watches the nix-darwin daemon as root, in launchd's ``system`` domain (its fifth argument). No macOS
machine is here: launchctl is a stand-in that records its calls; what a real launchd does with them
is not tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parents[1] / "modules" / "watchdog.sh"
LABEL = "com.nixfleet.agent"
MAX_AGE = 120

SHELLS = [s for s in ("/bin/sh", shutil.which("bash")) if s]


class Mac:
    """A fake user session: a plist, an alive file, and launchctl's view of the job."""

    def __init__(self, tmp: Path, shell: str) -> None:
        self.tmp = tmp
        self.shell = shell
        self.plist = tmp / "LaunchAgents" / f"{LABEL}.plist"
        self.plist.parent.mkdir()
        self.plist.write_text("<plist/>")
        self.alive = tmp / "state" / "alive"
        self.alive.parent.mkdir()
        self.calls_file = tmp / "calls"
        self.calls_file.write_text("")
        self.domain = f"gui/{os.getuid()}"

    def touch_alive(self, age: float) -> None:
        self.alive.write_text("")
        stamp = time.time() - age
        os.utime(self.alive, (stamp, stamp))

    def run(self, state: str, fail: str = "", args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PATH=f"{HERE / 'bin'}:{os.environ['PATH']}", FAKE_LAUNCHCTL_STATE=state,
                   FAKE_LAUNCHCTL_FAIL=fail, FAKE_LAUNCHCTL_CALLS=str(self.calls_file))
        argv = args if args is not None else [LABEL, str(self.plist), str(self.alive), str(MAX_AGE)]
        return subprocess.run([self.shell, str(SCRIPT), *argv], env=env, capture_output=True, text=True, timeout=30)

    def calls(self) -> list[str]:
        return self.calls_file.read_text().splitlines()


@pytest.fixture(params=SHELLS)
def mac(request: pytest.FixtureRequest, tmp_path: Path) -> Mac:
    return Mac(tmp_path, request.param)


def test_not_loaded_is_bootstrapped(mac: Mac) -> None:
    proc = mac.run("not-loaded")
    assert proc.returncode == 0, proc.stderr
    assert mac.calls() == [f"print {mac.domain}/{LABEL}", f"bootstrap {mac.domain} {mac.plist}"]
    assert "level=warn component=watchdog event=not-loaded label=com.nixfleet.agent action=bootstrap" in proc.stdout


def test_not_loaded_without_plist_reports_and_fails(mac: Mac) -> None:
    mac.plist.unlink()
    proc = mac.run("not-loaded")
    assert proc.returncode == 1
    assert mac.calls() == [f"print {mac.domain}/{LABEL}"]
    assert "level=error" in proc.stdout and "plist missing" in proc.stdout


def test_failed_bootstrap_is_logged_with_launchctl_output(mac: Mac) -> None:
    proc = mac.run("not-loaded", fail="bootstrap")
    assert proc.returncode == 1
    assert "action=bootstrap result=failed" in proc.stdout
    assert "Input/output error" in proc.stdout


def test_loaded_but_stopped_is_kickstarted(mac: Mac) -> None:
    mac.touch_alive(age=10_000)  # a stale file must not matter when nothing runs
    proc = mac.run("stopped")
    assert proc.returncode == 0, proc.stderr
    assert mac.calls() == [f"print {mac.domain}/{LABEL}", f"kickstart {mac.domain}/{LABEL}"]
    assert 'event=not-running label=com.nixfleet.agent action=kickstart state="not running"' in proc.stdout


def test_failed_kickstart_is_logged(mac: Mac) -> None:
    proc = mac.run("stopped", fail="kickstart")
    assert proc.returncode == 1
    assert "action=kickstart result=failed" in proc.stdout


def test_running_and_fresh_does_nothing_quietly(mac: Mac) -> None:
    mac.touch_alive(age=5)
    proc = mac.run("running")
    assert proc.returncode == 0
    assert mac.calls() == [f"print {mac.domain}/{LABEL}"]
    assert proc.stdout == "" and proc.stderr == ""


def test_running_but_hung_is_restarted(mac: Mac) -> None:
    mac.touch_alive(age=MAX_AGE + 60)
    proc = mac.run("running")
    assert proc.returncode == 0, proc.stderr
    assert mac.calls() == [f"print {mac.domain}/{LABEL}", f"kickstart -k {mac.domain}/{LABEL}"]
    assert "event=hung label=com.nixfleet.agent action=kickstart-k pid=4242" in proc.stdout
    assert f"max_age={MAX_AGE}" in proc.stdout


def test_failed_restart_of_hung_agent_is_logged(mac: Mac) -> None:
    mac.touch_alive(age=MAX_AGE + 60)
    proc = mac.run("running", fail="kickstart")
    assert proc.returncode == 1
    assert "action=kickstart-k result=failed pid=4242" in proc.stdout


def test_running_without_alive_file_is_left_alone(mac: Mac) -> None:
    proc = mac.run("running")
    assert proc.returncode == 0
    assert mac.calls() == [f"print {mac.domain}/{LABEL}"]
    assert "event=running" in proc.stdout and "alive=missing" in proc.stdout


@pytest.mark.parametrize("args", [[], [LABEL, "plist", "alive"], [LABEL, "plist", "alive", "2m"],
                                  [LABEL, "plist", "alive", "120", "user/501"],
                                  [LABEL, "plist", "alive", "120", "system", "extra"]],
                         ids=["none", "three", "bad-max-age", "bad-domain", "six"])
def test_bad_arguments_are_a_usage_error(mac: Mac, args: list[str]) -> None:
    proc = mac.run("running", args=args)
    assert proc.returncode == 2
    assert "event=usage" in proc.stdout
    assert mac.calls() == []


SYSTEM_CASES = {
    # state, alive age (None: no file), calls after `print`
    "not-loaded": ("not-loaded", None, ["bootstrap system {plist}"]),
    "stopped": ("stopped", None, ["kickstart system/{label}"]),
    "hung": ("running", MAX_AGE + 60, ["kickstart -k system/{label}"]),
    "healthy": ("running", 5, []),
}


@pytest.mark.parametrize("case", sorted(SYSTEM_CASES))
def test_system_domain_for_the_darwin_daemon(mac: Mac, case: str) -> None:
    """The nix-darwin module's root watchdog passes `system`: every launchctl call targets the
    system domain (`kickstart -k system/<label>`), never the caller's gui domain."""
    state, age, expected = SYSTEM_CASES[case]
    if age is not None:
        mac.touch_alive(age=age)
    proc = mac.run(state, args=[LABEL, str(mac.plist), str(mac.alive), str(MAX_AGE), "system"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert mac.calls() == [f"print system/{LABEL}"] + [c.format(plist=mac.plist, label=LABEL) for c in expected]


def test_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    proc = subprocess.run(["shellcheck", "--shell=sh", str(SCRIPT), str(HERE / "bin" / "launchctl")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout

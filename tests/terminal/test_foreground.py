"""The agent run by hand in a terminal: Ctrl-C stops it cleanly, in a real pty (pexpect).

The runtime never uses a pty (commands run on pipes); only this test tier needs ``pexpect``, to be the
terminal a user types Ctrl-C into. The line discipline turns ``\\x03`` into SIGINT for the agent's
foreground process group and echoes ``^C``, exactly as an interactive shell session would.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import git, parse_log_line, wait_for

pexpect = pytest.importorskip("pexpect", reason="pexpect is a test dependency (dev/test installs it)")

EXIT_SIGINT = 130  # the agent's documented status after Ctrl-C (128 + SIGINT)

# The command's own script starts a grandchild in the same process group; both ignore SIGTERM when
# asked to, so only the agent's SIGKILL escalation ends them.
SCRIPT = """#!/bin/sh
{trap}
sleep 300 &
echo "grandchild=$! group=$(ps -o pgid= -p $$ | tr -d ' ')" > "{pids}"
echo "long test running"
wait
"""


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


@pytest.fixture
def terminal_agent(agent_env: Callable[..., dict[str, str]], fleet_repo: Path, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    spawned: list[Any] = []

    def start(trap: str = "") -> tuple[Any, Path]:
        pids = tmp_path / "pids"
        script = fleet_repo / "hosts" / "test-host" / "tests" / "10-long.sh"
        script.write_text(SCRIPT.format(trap=trap, pids=pids))
        script.chmod(0o755)
        git(fleet_repo, "add", "-A")
        git(fleet_repo, "commit", "-q", "-m", "long test")
        env = agent_env(NIXFLEET_LOG_LEVEL="info", TERM="xterm")
        child = pexpect.spawn(sys.executable, ["-m", "nixfleet_agent.cli", "run"], env=env, encoding="utf-8",
                              codec_errors="replace", timeout=30, dimensions=(40, 200))
        child.logfile_read = io.StringIO()  # everything the terminal showed
        spawned.append(child)
        return child, pids

    yield start
    for child in spawned:
        if child.isalive():
            child.terminate(force=True)


def _run_until_ctrl_c(dashboard: Any, start: Callable[..., Any], trap: str, presses: int) -> tuple[Any, str, int]:
    child, pids = start(trap)
    child.expect("event=registered")
    dashboard.wait_message("heartbeat", timeout=15)
    mark = dashboard.mark()
    dashboard.send_command("test-host", "test")
    wait_for(lambda: pids.exists() and "group=" in pids.read_text(), timeout=15, what="the test's grandchild")
    group = int(pids.read_text().split("group=")[1].split()[0])
    assert _group_members(group), "the command's process group is running"
    child.sendcontrol("c")
    if presses == 2:  # the second press once the first was handled (two pending SIGINTs are one)
        child.expect("event=signal name=SIGINT")
        child.sendcontrol("c")
    child.expect(pexpect.EOF, timeout=30)
    child.close()
    status = dashboard.wait_message("status", timeout=5, since=mark,
                                    where=lambda r: r.payload.get("command") == "test")
    assert status.payload["status"] == "stopped", status.payload
    assert not _group_members(group), f"processes of the command's group {group} survived"
    return child, child.logfile_read.getvalue(), status.payload["exit_code"]


def _assert_readable(output: str) -> None:
    assert "Traceback" not in output
    lines = [line for line in output.replace("\r\n", "\n").split("\n") if line.strip()]
    assert lines, "the agent logged nothing"
    for line in lines:
        if not line.strip().replace("^C", ""):  # the terminal's own echo of the keys, on a line of its own
            continue
        # The terminal echoes a key the moment it is typed; a second Ctrl-C typed while another
        # thread writes the next line can land before it (the agent cannot know before its handler
        # runs). The line itself must still be whole.
        line = line.lstrip("^C") if line.startswith("^C") and output.count("^C") > 1 else line
        fields = parse_log_line(line)
        assert {"level", "component", "event"} <= set(fields) and line.startswith("level="), repr(line)


def test_ctrl_c_stops_the_agent_and_the_running_command(dashboard, terminal_agent):
    child, output, _ = _run_until_ctrl_c(dashboard, terminal_agent, trap="", presses=1)
    _assert_readable(output)
    assert child.exitstatus == EXIT_SIGINT and child.signalstatus is None


def test_ctrl_c_ends_a_command_group_that_ignores_sigterm(dashboard, terminal_agent):
    child, output, _ = _run_until_ctrl_c(dashboard, terminal_agent, trap="trap '' TERM", presses=1)
    assert child.exitstatus == EXIT_SIGINT
    _assert_readable(output)


def test_a_second_ctrl_c_does_not_wait_for_the_grace_period(dashboard, terminal_agent):
    child, output, _ = _run_until_ctrl_c(dashboard, terminal_agent, trap="trap '' TERM", presses=2)
    assert child.exitstatus == EXIT_SIGINT
    _assert_readable(output)
    assert "event=stop_now signal=SIGINT" in output
    assert "event=killing_child_on_shutdown" in output and "after_s=0 " in output  # not after the grace

"""The command line: --version, --help, check (one-line verdict, exit 0/1) and status (--json)."""

from __future__ import annotations

import json

import pytest

from nixfleet_agent import buildinfo
from support import run_cli


@pytest.mark.parametrize("flag", ["--version", "-v", "-version"])
def test_version_first_line_is_upstream_format(agent_env, flag):
    result = run_cli([flag], agent_env())
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"nixfleet-agent {buildinfo.version()}"
    assert lines[1] == f"source_commit {buildinfo.source_commit()}"


def test_help_lists_subcommands_and_settings(agent_env):
    result = run_cli(["--help"], agent_env())
    assert result.returncode == 0
    for word in ("check", "status", "NIXFLEET_URL", "NIXFLEET_TOKEN", "NIXFLEET_INTERVAL", "interval", "--config"):
        assert word in result.stdout


def test_check_ok_against_dashboard_without_registering(dashboard, agent_env):
    result = run_cli(["check"], agent_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and result.stdout.startswith("OK: ")
    assert dashboard.attempts and dashboard.attempts[-1][1] == 101
    assert not dashboard.messages("register")  # check must not kick a running agent off the dashboard


def test_check_reports_rejected_token(dashboard, agent_env):
    result = run_cli(["--check"], agent_env(token="wrong"))
    assert result.returncode == 1
    assert result.stdout.strip() == f"FAILED: {dashboard.url} rejected the token (HTTP 401)"
    assert "wrong" not in result.stdout.replace("rejected the token", "")


def test_unknown_option_exits_2(agent_env):
    result = run_cli(["--frobnicate"], agent_env())
    assert result.returncode == 2 and "unrecognized arguments: --frobnicate" in result.stderr


def test_check_reports_unreachable_dashboard(agent_env):
    from support import free_port

    url = f"ws://127.0.0.1:{free_port()}/ws"
    result = run_cli(["check"], agent_env(NIXFLEET_URL=url))
    assert result.returncode == 1
    assert result.stdout.startswith(f"FAILED: cannot connect to {url}: ")


def test_check_reports_config_errors(agent_env):
    result = run_cli(["check"], agent_env(NIXFLEET_INTERVAL="0"))
    assert result.returncode == 2  # the README's configuration-error status, same as `run`
    assert result.stdout.strip() == "FAILED: configuration invalid (1 problem(s))"
    assert "NIXFLEET_INTERVAL: must be between 1 and 3600 (got '0')" in result.stderr


def test_status_shows_last_command(dashboard, start_agent, agent_env):
    agent = start_agent()
    dashboard.wait_message("heartbeat", timeout=10)
    dashboard.send_command("test-host", "refresh-git")
    dashboard.wait_message("status", timeout=5)
    agent.stop()
    result = run_cli(["status", "--json"], agent_env())
    assert result.returncode == 0
    state = json.loads(result.stdout)
    assert state["last_command"]["command"] == "refresh-git" and state["last_command"]["exit_code"] == 0
    assert set(state["compartments"]) == {"git", "lock", "system", "tests"}
    human = run_cli(["status"], agent_env())
    assert human.returncode == 0
    assert "last command: refresh-git -> ok (exit 0)" in human.stdout
    assert state["extras"]["last_registration"].endswith("Z")
    assert "last registered with the dashboard: 20" in human.stdout


def test_status_works_without_valid_config(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "NIXFLEET_STATE_DIR": str(tmp_path), "NIXFLEET_INTERVAL": "0"}
    result = run_cli(["status"], env)
    assert result.returncode == 0
    assert "last command: none recorded" in result.stdout


def test_state_files_are_private(dashboard, start_agent, tmp_path):
    start_agent()
    dashboard.wait_message("heartbeat", timeout=10)
    state = tmp_path / "state"
    assert state.stat().st_mode & 0o077 == 0
    assert (state / "state.json").stat().st_mode & 0o077 == 0

"""End to end with the real agent process and the reference dashboard (tests/conftest.py fixtures):
a repository that cannot be cloned at start never keeps the host off the dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from repo_support import sh_git
from support import TEST_HOST, make_fleet_repo


def git_status(record: Any) -> dict[str, str]:
    return dict(record.payload.get("update_status", {}).get("git", {}))


def test_failed_clone_at_start_still_registers_then_pull_clones(dashboard, start_agent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    later = tmp_path / "later-origin"
    agent = start_agent(NIXFLEET_REPO_URL=str(later))
    dashboard.wait_message("register", host=TEST_HOST, timeout=15)
    failing = dashboard.wait_message(
        "heartbeat", host=TEST_HOST, where=lambda r: git_status(r).get("status") == "error", timeout=10
    )
    assert "cannot clone repo_url" in git_status(failing)["message"]
    assert str(later) in git_status(failing)["message"]
    assert agent.running()

    make_fleet_repo(later)
    head = sh_git("rev-parse", "HEAD", cwd=later)
    mark = dashboard.mark()
    dashboard.send_command(TEST_HOST, "pull")
    status = dashboard.wait_message("status", host=TEST_HOST, since=mark, timeout=30)
    assert status.payload.get("status") == "ok", status.payload
    dashboard.wait_message(
        "heartbeat", host=TEST_HOST, since=mark, where=lambda r: r.payload.get("generation") == head[:7], timeout=10
    )
    assert (tmp_path / "state" / "repo" / "flake.nix").exists()


def test_legacy_config_repo_warns_at_start_and_at_registration(dashboard, start_agent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    checkout = make_fleet_repo(tmp_path / "user-checkout")
    agent = start_agent(NIXFLEET_REPO_URL="", NIXFLEET_NIXCFG=str(checkout))
    register = dashboard.wait_message("register", host=TEST_HOST, timeout=15)
    assert agent.wait_event("deprecated_config_repo", timeout=5)
    notice = dashboard.wait_message(
        "output", host=TEST_HOST, since=register.index,
        where=lambda r: "deprecated" in str(r.payload.get("line", "")), timeout=5,
    )
    assert notice.payload["stream"] == "stderr"

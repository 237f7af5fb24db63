"""The restart decision finds the agent it was started as when no profile and no PATH entry names it.

Why: on a Debian machine ``./dev/test`` installs the agent into a virtualenv whose ``bin/`` is not on
``PATH``; the agent then found nothing after a switch, exited 101 "to be safe" and, with nothing
supervising it, never re-registered.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfleet_agent.host import freshness
from nixfleet_agent.commands import agentpkg


@pytest.fixture
def nothing_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agentpkg, "_UNIT_FILES", ())
    monkeypatch.setattr(agentpkg, "candidates", lambda platform: [tmp_path / "no-profile/bin/nixfleet-agent"])
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


def test_console_script_outside_path_is_found_and_compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           nothing_installed: None) -> None:
    script = tmp_path / "venv/bin/nixfleet-agent"
    script.parent.mkdir(parents=True)
    script.write_text("#!/venv/bin/python\nfrom nixfleet_agent.cli import main\nmain()\n")
    monkeypatch.setattr(agentpkg, "STARTED_AS", script)
    assert agentpkg.installed_agent("nixos") == script
    before = agentpkg.fingerprint("nixos")
    assert before.startswith("agent:")
    assert agentpkg.restart_needed("nixos", before) == (False, "agent package unchanged")
    script.write_text("#!/other/python\nfrom nixfleet_agent.cli import main\nmain()\n")  # reinstalled elsewhere
    assert agentpkg.restart_needed("nixos", before) == (True, "installed agent changed")


def test_started_as_python_dash_m_compares_the_whole_package(monkeypatch: pytest.MonkeyPatch,
                                                             nothing_installed: None) -> None:
    cli = freshness.package_dir() / "cli.py"
    monkeypatch.setattr(agentpkg, "STARTED_AS", cli)
    before = agentpkg.fingerprint("nixos")
    assert f"package:{freshness.package_dir()}@" in before
    assert agentpkg.restart_needed("nixos", before) == (False, "agent package unchanged")
    monkeypatch.setattr(freshness, "tree_hash", lambda: "0" * 64)  # another module of the package changed
    assert agentpkg.restart_needed("nixos", before) == (True, "installed agent changed")


def test_a_path_entry_still_wins_over_started_as(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 nothing_installed: None) -> None:
    on_path = tmp_path / "empty-bin/nixfleet-agent"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setattr(agentpkg, "STARTED_AS", tmp_path / "elsewhere")
    assert agentpkg.installed_agent("nixos") == on_path


def test_started_as_is_none_for_dash_c(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agentpkg.sys, "argv", ["-c"])
    assert agentpkg._started_as() is None

"""Exit statuses and one-line verdicts of ``check`` and ``status`` a newcomer meets first."""

from __future__ import annotations

import os

import pytest

from support import AGENT_SRC, run_cli


def _env(**extra: str) -> dict[str, str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(AGENT_SRC), os.environ.get("PYTHONPATH", "")) if p)}
    base.update(extra)
    return base


def test_check_exits_2_with_one_line_per_configuration_problem(tmp_path):
    result = run_cli(["check"], _env(NIXFLEET_URL="http://x", NIXFLEET_INTERVAL="0", NIXFLEET_TOKEN="t",
                                     NIXFLEET_STATE_DIR=str(tmp_path)))
    assert result.returncode == 2
    problems = result.stderr.strip().splitlines()
    assert len(problems) >= 2 and all(line.startswith("nixfleet-agent: config error: ") for line in problems)
    assert any("NIXFLEET_INTERVAL" in line for line in problems)
    assert any("NIXFLEET_URL" in line for line in problems)
    assert result.stdout.strip() == f"FAILED: configuration invalid ({len(problems)} problem(s))"
    assert "Traceback" not in result.stderr


def test_status_names_a_missing_state_directory_and_its_setting(tmp_path):
    missing = tmp_path / "never-ran"
    result = run_cli(["status"], _env(NIXFLEET_STATE_DIR=str(missing)))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"nixfleet-agent: state directory {missing} does not exist (from NIXFLEET_STATE_DIR); nothing to show")
    as_json = run_cli(["status", "--json", "--state-dir", str(missing)], _env())
    assert as_json.returncode == 1 and "does not exist (from --state-dir)" in as_json.stderr
    assert not missing.exists()  # status only reads: it never creates the directory


def test_status_of_a_file_instead_of_a_directory(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    result = run_cli(["status"], _env(NIXFLEET_STATE_DIR=str(path)))
    assert result.returncode == 1 and "is not a directory" in result.stderr and "Traceback" not in result.stderr


def test_status_of_an_unreadable_state_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o000)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: a 0000 directory is readable anyway")
        result = run_cli(["status"], _env(NIXFLEET_STATE_DIR=str(locked)))
        assert result.returncode == 1
        assert "cannot be read: Permission denied" in result.stderr and "Traceback" not in result.stderr
    finally:
        locked.chmod(0o700)

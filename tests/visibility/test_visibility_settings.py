"""The ``[reboot]`` and ``[metrics]`` tables: parsed from TOML (as the modules render them) and the
environment, bad values refused with one line naming the key, exit 2 from a real process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nixfleet_agent.config import ConfigError, load
from support import run_cli

BASE = {"NIXFLEET_URL": "ws://127.0.0.1:9/ws", "NIXFLEET_TOKEN": "t", "NIXFLEET_HOSTNAME": "h",
        "NIXFLEET_REPO_DIR": "/nonexistent/repo", "NIXFLEET_STATE_DIR": "/nonexistent/state"}


def conf(tmp_path: Path, text: str, **env: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load({"config": str(path)}, {**BASE, **env})


def test_defaults_off(tmp_path: Path) -> None:
    vis = conf(tmp_path, "").visibility
    assert (vis.reboot_allow, vis.textfile_directory, vis.randomized_delay_sec) == (False, "", 0)


def test_tables_as_the_modules_render_them(tmp_path: Path) -> None:
    vis = conf(tmp_path, """
[reboot]
allow = true
randomized_delay_sec = 1800
[reboot.window]
lower = "23:30"
upper = "04:00"
[metrics]
textfile_directory = "/run/nixfleet-agent-metrics"
""").visibility
    assert vis.reboot_allow and (vis.window_lower, vis.window_upper) == (23 * 60 + 30, 240)
    assert vis.randomized_delay_sec == 1800 and vis.textfile_directory == "/run/nixfleet-agent-metrics"
    assert vis.window_text == "23:30-04:00"


def test_environment_wins(tmp_path: Path) -> None:
    vis = conf(tmp_path, "[reboot]\nallow = true\n", NIXFLEET_REBOOT_ALLOW="no",
               NIXFLEET_REBOOT_WINDOW="01:00-02:00").visibility
    assert not vis.reboot_allow and vis.window_text == "01:00-02:00"


@pytest.mark.parametrize(("text", "culprit"), [
    ('[reboot]\nallow = "maybe"\n', "reboot.allow (in"),
    ('[reboot]\nwindow = { lower = "25:00", upper = "01:00" }\n', "reboot.window (in"),
    ('[reboot]\nwindow = { lower = "01:00" }\n', "reboot.window (in"),
    ("[reboot]\nrandomized_delay_sec = -5\n", "reboot.randomized_delay_sec (in"),
    ('[metrics]\ntextfile_directory = "relative/dir"\n', "metrics.textfile_directory (in"),
    ("[metrics]\ntextfile_dir = 1\n", "metrics.textfile_dir (in"),
    ('reboot = "yes"\n', "reboot (in"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, culprit: str) -> None:
    with pytest.raises(ConfigError) as exc:
        conf(tmp_path, text)
    assert len(exc.value.problems) == 1 and culprit in exc.value.problems[0], exc.value.problems


def test_bad_window_from_the_environment_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""), **BASE,
           "NIXFLEET_STATE_DIR": str(tmp_path / "state"), "NIXFLEET_REBOOT_WINDOW": "late"}
    result = run_cli([], env, timeout=20)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "NIXFLEET_REBOOT_WINDOW" in lines[0], result.stderr
    assert "Traceback" not in result.stderr

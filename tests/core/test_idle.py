"""An idle agent costs (almost) nothing: while nothing changed, a heartbeat starts no child process
(before: a ``git rev-parse`` every interval, 4-5 CPU ticks per 30 s against 0 for the Go agent)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from support import git


def git_counter(tmp_path: Path) -> tuple[Path, Path]:
    """A ``git`` first on PATH that appends one line per run to a file, then runs the real git."""
    bin_dir, calls = tmp_path / "countbin", tmp_path / "git-calls"
    bin_dir.mkdir()
    real = shutil.which("git")
    shim = bin_dir / "git"
    shim.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{real}" "$@"\n')
    shim.chmod(0o755)
    calls.write_text("")
    return bin_dir, calls


def test_idle_heartbeats_start_no_git(dashboard, start_agent, agent_env, tmp_path, fleet_repo):
    bin_dir, calls = git_counter(tmp_path)
    env = agent_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    start_agent(env)
    first = dashboard.wait_message("heartbeat", timeout=20)
    dashboard.wait_message("heartbeat", since=first.index + 1, timeout=10)  # startup work is over
    before = calls.read_text().splitlines()
    mark = dashboard.mark()
    for _ in range(5):
        mark = dashboard.wait_message("heartbeat", since=mark, timeout=10).index + 1
    during = calls.read_text().splitlines()[len(before):]
    assert during == [], f"idle heartbeats ran git: {during}"
    # and a moved HEAD is still seen: commit in the clone, the next heartbeat carries it
    clone = tmp_path / "state" / "repo"
    (clone / "marker").write_text("x")
    git(clone, "add", "marker")
    git(clone, "commit", "-q", "-m", "moved")
    head = git(clone, "rev-parse", "--short=7", "HEAD")
    dashboard.wait_message("heartbeat", where=lambda r: r.payload["generation"] == head, timeout=10)

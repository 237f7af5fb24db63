"""Issue 16 end to end: a real agent process, the reference dashboard, real git. The heartbeat's
extra ``reboot``/``drift`` fields, the Prometheus text file and ``nixfleet-agent status``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support import git, run_cli

HOST = "test-host"
T1 = 1_700_000_000


def commit_at(repo: Path, name: str, when: int) -> str:
    (repo / name).write_text(name)
    git(repo, "add", name)
    env = dict(os.environ, GIT_AUTHOR_NAME="A", GIT_AUTHOR_EMAIL="a@example.test", GIT_COMMITTER_NAME="A",
               GIT_COMMITTER_EMAIL="a@example.test", GIT_COMMITTER_DATE=f"{when} +0000", HOME=str(repo))
    subprocess.run(["git", "commit", "-q", "-m", name], cwd=repo, env=env, check=True, capture_output=True)
    return git(repo, "rev-parse", "HEAD")


def test_drift_and_reboot_reach_dashboard_file_and_status(session, fleet_repo: Path, tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    session.start(NIXFLEET_METRICS_TEXTFILE_DIRECTORY=str(prom))
    first = session.dash.wait_message("heartbeat", timeout=10).payload
    assert first["reboot"]["applicable"] is True  # platform nixos; this machine has no booted-system
    assert first["drift"]["deployed_commit"] is None and "no switch" in first["drift"]["detail"]

    deployed = git(fleet_repo, "rev-parse", "HEAD")
    status, _ = session.run("switch")
    assert status["status"] == "ok", status
    session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=10,
                              where=lambda r: r.payload["drift"]["deployed_commit"] == deployed
                              and r.payload["drift"]["commits_behind"] == 0)

    commit_at(fleet_repo, "b", T1)
    commit_at(fleet_repo, "c", T1 + 60)
    status, _ = session.run("pull")  # the agent's own fetch; drift needs no other network traffic
    assert status["status"] == "ok", status
    beat = session.dash.wait_message("heartbeat", since=session.dash.mark(), timeout=10,
                                     where=lambda r: r.payload["drift"]["commits_behind"] == 2).payload
    assert beat["drift"]["behind_since"] == "2023-11-14T22:13:20Z"

    parser = pytest.importorskip("prometheus_client.parser")
    samples = {s.name: s for f in parser.text_string_to_metric_families((prom / "nixfleet_agent.prom").read_text())
               for s in f.samples}
    assert samples["nixfleet_agent_commits_behind"].value == 2
    assert samples["nixfleet_agent_connected"].value == 1
    assert samples["nixfleet_agent_deployed_commit_info"].labels["commit"] == deployed
    assert samples["nixfleet_agent_last_switch_success"].value == 1

    out = run_cli(["status"], session.agent.env)
    assert out.returncode == 0, out.stderr
    assert f"drift: deployed {deployed[:12]}, 2 commits behind origin since 2023-11-14T22:13:20Z" in out.stdout
    assert "needs reboot: unknown" in out.stdout


def test_idle_with_drift_and_textfile_starts_no_git_and_writes_nothing(session, tmp_path: Path) -> None:
    """With a deployed commit, drift on and the text file on, idle heartbeats run no git and leave
    the file alone (it is replaced only when a value changes)."""
    import shutil

    bin_dir, calls = tmp_path / "countbin", tmp_path / "git-calls"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{shutil.which("git")}" "$@"\n')
    (bin_dir / "git").chmod(0o755)
    prom = tmp_path / "prom"
    prom.mkdir()
    path = f"{bin_dir}{os.pathsep}{session.shims.env()['PATH']}"
    session.start(PATH=path, NIXFLEET_METRICS_TEXTFILE_DIRECTORY=str(prom))
    status, _ = session.run("switch")
    assert status["status"] == "ok", status
    dash = session.dash
    dash.wait_message("heartbeat", since=dash.mark(), timeout=10,
                      where=lambda r: r.payload["drift"]["commits_behind"] == 0)
    mark = dash.wait_message("heartbeat", since=dash.mark(), timeout=10).index + 1  # settled
    before, inode = calls.read_text().splitlines(), (prom / "nixfleet_agent.prom").stat().st_ino
    for _ in range(5):
        mark = dash.wait_message("heartbeat", since=mark, timeout=10).index + 1
    assert calls.read_text().splitlines()[len(before):] == []
    assert (prom / "nixfleet_agent.prom").stat().st_ino == inode

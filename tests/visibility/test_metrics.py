"""The Prometheus text file, read back with prometheus_client's own parser (test-only dependency)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client is a test-only dependency")

from nixfleet_agent import buildinfo  # noqa: E402
from nixfleet_agent.config import load  # noqa: E402
from nixfleet_agent.host.status import StatusStore  # noqa: E402
from nixfleet_agent.visibility import record  # noqa: E402
from nixfleet_agent.visibility.promfile import FILE_NAME, Family, render, write_atomic  # noqa: E402
from nixfleet_agent.visibility.service import Visibility  # noqa: E402

from test_drift import T0, commit, fetch, git, lock  # noqa: E402
from test_needsreboot import host as reboot_host, system  # noqa: E402


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in parser.text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(parsed: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [v for lab, v in parsed[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, (name, labels, parsed.get(name))
    return matches[0]


def test_render_escapes_what_the_parser_unescapes() -> None:
    odd = 'a "quoted" back\\slash\nnewline'
    text = render([Family("x_info", "gauge", "help with \\ and\nnewline", [((("v", odd),), 1)]),
                   Family("n", "counter", "a counter", [((), 3)]),
                   Family("empty", "gauge", "left out", [])])
    parsed = list(parser.text_string_to_metric_families(text))
    assert [f.name for f in parsed] == ["x_info", "n"]
    assert parsed[0].samples[0].labels == {"v": odd} and parsed[0].documentation == "help with \\ and\nnewline"
    assert parsed[1].type == "counter" and parsed[1].samples[0].value == 3
    assert text.endswith("\n") and "empty" not in text


def test_atomic_write_mode_and_no_leftovers(tmp_path: Path) -> None:
    old = os.umask(0o077)  # the agent's umask
    try:
        path = write_atomic(tmp_path, "a 1\n")
        first = path.stat()
        write_atomic(tmp_path, "a 2\n")
    finally:
        os.umask(old)
    second = path.stat()
    assert stat.S_IMODE(second.st_mode) == 0o644  # node_exporter runs as another user
    assert second.st_ino != first.st_ino  # replaced by rename, never rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME] and path.read_text() == "a 2\n"


@pytest.fixture
def agent_parts(tmp_path: Path):  # type: ignore[no-untyped-def]
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "--initial-branch=main")
    deployed = commit(origin, "a", T0, lock(T0 - 86400 * 40, T0 - 86400 * 400))
    clone = tmp_path / "state" / "repo"
    clone.parent.mkdir()
    git(tmp_path, "clone", "-q", "--branch", "main", "--no-tags", str(origin), str(clone))
    prom = tmp_path / "prom"
    prom.mkdir()
    cfg = load({}, {"NIXFLEET_URL": "ws://127.0.0.1:9/ws", "NIXFLEET_TOKEN": "t", "NIXFLEET_HOSTNAME": "h",
                    "NIXFLEET_STATE_DIR": str(clone.parent), "NIXFLEET_REPO_URL": str(origin),
                    "NIXFLEET_PLATFORM": "nixos", "NIXFLEET_METRICS_TEXTFILE_DIRECTORY": str(prom)})
    status = StatusStore(clone.parent)
    sysroot = tmp_path / "sysroot"
    a = system(sysroot, "aaa-nixos-system", "k1-linux", "i1-initrd", "m1-modules")
    b = system(sysroot, "bbb-nixos-system", "k2-linux", "i1-initrd", "m1-modules")
    reboot_host(sysroot, a, b, b)
    vis = Visibility(cfg, status, clone, root=sysroot)
    return vis, status, origin, clone, prom / FILE_NAME, deployed


def test_metrics_file_values(agent_parts) -> None:  # type: ignore[no-untyped-def]
    vis, status, origin, clone, path, deployed = agent_parts
    vis.tick(connected=False)
    parsed = families(path.read_text())
    assert value(parsed, "nixfleet_agent_info", version=buildinfo.version(),
                 source_commit=buildinfo.source_commit()) == 1
    assert value(parsed, "nixfleet_agent_connected") == 0
    assert "nixfleet_agent_commits_behind" not in parsed  # no switch yet: unknown, left out
    assert value(parsed, "nixfleet_agent_needs_reboot") == 1
    assert value(parsed, "nixfleet_agent_needs_reboot_reason", reason="kernel") == 1
    assert value(parsed, "nixfleet_agent_needs_reboot_reason", reason="initrd") == 0
    assert value(parsed, "nixfleet_agent_health_check_failures_total") == 0
    assert value(parsed, "nixfleet_agent_rollbacks_total") == 0

    record.finish(status, "switch", deployed, True, now=lambda: T0 + 50)  # the hook re-ticks
    commit(origin, "b", T0 + 100)
    commit(origin, "c", T0 + 200)
    fetch(clone)
    vis.tick(connected=True)
    parsed = families(path.read_text())
    assert value(parsed, "nixfleet_agent_connected") == 1
    assert value(parsed, "nixfleet_agent_deployed_commit_info", commit=deployed, branch="main") == 1
    assert value(parsed, "nixfleet_agent_commits_behind") == 2
    assert value(parsed, "nixfleet_agent_oldest_undeployed_commit_timestamp_seconds") == T0 + 100
    assert value(parsed, "nixfleet_agent_last_switch_timestamp_seconds") == T0 + 50
    assert value(parsed, "nixfleet_agent_last_switch_success", action="switch") == 1
    assert value(parsed, "nixfleet_agent_last_successful_switch_timestamp_seconds") == T0 + 50
    assert value(parsed, "nixfleet_agent_flake_lock_last_modified_timestamp_seconds") == T0 - 86400 * 40
    assert value(parsed, "nixfleet_agent_flake_input_last_modified_timestamp_seconds", input="flake-utils") \
        == T0 - 86400 * 400

    record.finish(status, "switch", "", False, now=lambda: T0 + 60)
    record.note_rollback()
    record.note_health_failure(2)
    parsed = families(path.read_text())
    assert value(parsed, "nixfleet_agent_last_switch_success", action="switch") == 0
    assert value(parsed, "nixfleet_agent_last_successful_switch_timestamp_seconds") == T0 + 50
    assert value(parsed, "nixfleet_agent_rollbacks_total") == 1
    assert value(parsed, "nixfleet_agent_health_check_failures_total") == 2
    assert record.counters(StatusStore(clone.parent)) == {"health_check_failures": 2, "rollbacks": 1}  # persisted


def test_written_only_when_a_value_changed(agent_parts) -> None:  # type: ignore[no-untyped-def]
    vis, status, origin, clone, path, deployed = agent_parts
    vis.tick(connected=True)
    first = path.stat().st_ino
    for _ in range(10):
        vis.tick(connected=True)
    assert path.stat().st_ino == first
    vis.tick(connected=False)
    assert path.stat().st_ino != first


def test_rollback_goes_back_to_the_previous_deployed_commit(agent_parts) -> None:  # type: ignore[no-untyped-def]
    vis, status, origin, clone, path, first = agent_parts
    second = commit(origin, "b", T0 + 100)
    fetch(clone)
    record.finish(status, "switch", first, True)
    record.finish(status, "switch", second, True)
    assert record.deployed_commit(status) == second
    record.finish(status, "rollback", "", True)
    assert record.deployed_commit(status) == first
    assert vis.drift_state().commits_behind == 1

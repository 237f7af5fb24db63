"""Small pure pieces: generation picking, result files, operation records, restart decision."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from nixfleet_agent.ops import operations
from nixfleet_agent.commands import agentpkg, rebuild


def _profiles(tmp_path: Path, gens: list[int], current: int | None) -> Path:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for n in gens:
        (profiles / f"home-manager-{n}-link").symlink_to(tmp_path)
    if current is not None:
        (profiles / "home-manager").symlink_to(f"home-manager-{current}-link")
    return profiles


@pytest.mark.parametrize("gens,current,expected", [
    (list(range(1, 13)), 12, 11),      # lexical sort would pick 9 ("-9-" > "-12-" > "-11-")
    ([9, 10], 10, 9),                  # across the digit boundary
    ([3, 7, 12], 12, 7),               # gaps after garbage collection
    ([5, 6, 7], 6, 5),                 # current is not the newest (after an earlier rollback)
    ([4], 4, None),                    # only one generation: refuse, never re-activate it
    ([], None, None),
    ([2, 3], None, 2),                 # no current link: the newest counts as current
])
def test_previous_generation_is_numeric(tmp_path: Path, gens: list[int], current: int | None, expected: int | None) -> None:
    assert rebuild.previous_generation(_profiles(tmp_path, gens, current)) == expected


def test_result_file_parsing(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    assert operations.read_result(path) is None
    path.write_text(json.dumps({"exit_code": 143, "signal": 15}))
    res = operations.read_result(path)
    assert res is not None and res.exit_code == 143 and res.signal == 15
    path.write_text(json.dumps({"id": "x", "action": "switch", "exit_code": 2, "error": "commit: not in the clone"}))
    res = operations.read_result(path)
    assert res is not None and res.exit_code == 2 and res.start_error == "commit: not in the clone"
    path.write_text("{garbage")
    res = operations.read_result(path)
    assert res is not None and res.exit_code == 1 and "unreadable result file" in (res.start_error or "")


def test_corrupt_operation_record_is_skipped(tmp_path: Path) -> None:
    log_path, result_path = operations.paths_for(tmp_path, tmp_path / "priv", "20260101T000000Z-abcd", "detached")
    op = operations.Operation(id="20260101T000000Z-abcd", command="switch", action="switch", argv=["x"],
                              launcher="detached", log_path=str(log_path), result_path=str(result_path))
    operations.save(tmp_path, op)
    (operations.ops_dir(tmp_path) / "20260101T000001Z-ffff.json").write_text("{not json")
    assert [o.id for o in operations.unreported(tmp_path)] == [op.id]
    assert (operations.ops_dir(tmp_path) / "20260101T000001Z-ffff.bad").is_file()  # quarantined
    assert (operations.ops_dir(tmp_path).stat().st_mode & 0o777) == 0o700
    operations.mark_reported(tmp_path, op)
    assert operations.unreported(tmp_path) == []


def test_restart_decision_compares_store_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running = "/nix/store/aaaa-nixfleet-agent-1.0"
    monkeypatch.setattr(agentpkg.freshness, "store_path", lambda: running)
    monkeypatch.setattr(agentpkg, "installed_agent", lambda platform: Path("/x/bin/nixfleet-agent"))
    monkeypatch.setattr(agentpkg, "store_root", lambda path: running)
    assert agentpkg.restart_needed("nixos", "") == (False, f"agent package unchanged ({running})")
    monkeypatch.setattr(agentpkg, "store_root", lambda path: "/nix/store/bbbb-nixfleet-agent-1.1")
    assert agentpkg.restart_needed("nixos", "")[0] is True


def test_restart_when_nothing_can_be_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agentpkg, "installed_agent", lambda platform: None)
    monkeypatch.setattr(agentpkg, "fingerprint", lambda platform: "")
    assert agentpkg.restart_needed("nixos", "")[0] is True


def test_signal_group_never_signals_the_agents_own_group() -> None:
    import signal
    import subprocess

    # a child that (wrongly) shares our process group: only it may be signalled, not the group
    child = subprocess.Popen(["sleep", "30"])
    assert os.getpgid(child.pid) == os.getpgid(0)
    assert operations.signal_group(child.pid, signal.SIGTERM) is None
    assert child.wait(5) == -signal.SIGTERM  # and this test process is still alive to see it


def _privileged_op(tmp_path: Path) -> tuple[operations.Operation, Path]:
    state, priv = tmp_path / "state", tmp_path / "priv"
    state.mkdir()
    priv.mkdir()
    log, result = operations.paths_for(state, priv, "20260101T000000Z-abcd", "privileged")
    op = operations.Operation(id="20260101T000000Z-abcd", command="switch", action="switch", argv=[],
                              launcher="privileged", log_path=str(log), result_path=str(result), commit="a" * 40,
                              flake_attr="h")
    launcher = operations.PrivilegedLauncher(state)
    launcher.start(op)
    return op, launcher.request_path()


def test_privileged_request_nobody_picks_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setattr(operations, "PICKUP_TIMEOUT", 0.3)
    op, request = _privileged_op(tmp_path)
    assert json.loads(request.read_text()) == {"id": op.id, "action": "switch", "commit": "a" * 40, "flake_attr": "h"}
    res = operations.follow(tmp_path / "state", op, lambda line: None, threading.Event(), request_path=request)
    assert res is not None and res.exit_code == 1 and "not picked up" in (res.start_error or "")
    assert not request.exists()  # withdrawn, so a late root unit does not switch unasked


def test_privileged_request_rejected_without_usable_id(tmp_path: Path) -> None:
    import threading

    op, request = _privileged_op(tmp_path)
    request.unlink()  # consumed by the root unit, which refused it
    (tmp_path / "priv" / "rejected.json").write_text(json.dumps({"id": op.id, "exit_code": 2, "error": "commit: unknown"}))
    res = operations.follow(tmp_path / "state", op, lambda line: None, threading.Event(), request_path=request)
    assert res is not None and res.exit_code == 2 and res.start_error == "privileged switch request rejected: commit: unknown"


def test_operation_from_before_the_last_boot_counts_as_interrupted() -> None:
    booted = operations.boot_time()
    assert booted is not None  # Linux: /proc/stat btime
    old = operations.Operation(id="x", command="switch", action="switch", argv=[], launcher="detached",
                               log_path="l", result_path="r", started_at=booted - 60)
    new = operations.Operation(id="y", command="switch", action="switch", argv=[], launcher="detached",
                               log_path="l", result_path="r")
    assert operations.interrupted_by_reboot(old) and not operations.interrupted_by_reboot(new)


def test_restart_decision_follows_the_service_definition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    store.mkdir()
    old_unit, new_unit = store / "aaaa-unit-nixfleet-agent.service", store / "bbbb-unit-nixfleet-agent.service"
    old_unit.write_text("ExecStart=/nix/store/aaaa-nixfleet-agent/bin/nixfleet-agent\n")
    new_unit.write_text("ExecStart=/nix/store/bbbb-nixfleet-agent/bin/nixfleet-agent\n")
    unit = tmp_path / "etc" / "nixfleet-agent.service"
    unit.parent.mkdir()
    unit.symlink_to(old_unit)
    monkeypatch.setattr(agentpkg, "_UNIT_FILES", (str(unit),))
    before = agentpkg.fingerprint("nixos")
    assert before.startswith("service:")
    assert agentpkg.restart_needed("nixos", before) == (False, "agent service definition unchanged")
    unit.unlink()
    unit.symlink_to(new_unit)  # what switch-to-configuration does to /etc/systemd/system
    assert agentpkg.restart_needed("nixos", before) == (True, "the agent's service definition changed")


def test_code_hash_covers_the_whole_package_not_the_module_s_own_group() -> None:
    """freshness lives in host/; its hash must still cover cli.py, link/, ops/ and the build facts
    (after the regroup it covered host/ only, so a changed session.py looked unchanged)."""
    import nixfleet_agent
    from nixfleet_agent.host import freshness

    pkg = Path(nixfleet_agent.__file__).resolve().parent
    assert freshness.package_dir() == pkg
    assert (freshness.package_dir() / "cli.py").is_file()
    assert (freshness.package_dir() / "link" / "session.py").is_file()

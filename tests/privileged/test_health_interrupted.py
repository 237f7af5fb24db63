"""A health-gated switch whose verdict root never reached is undone (health/pending.py).

During the grace period the boot loader's default is the previous generation, so a host that
restarts then (hung by the new configuration, reset by a watchdog, a power cut) boots the
generation known to be good; root stopped during the grace period is undone by ``--finalize``
(the unit's ``ExecStopPost=``), a hard reset by the next root run; either way the commit is
remembered as bad and the request gets a result that says what happened. Retention waits for
the verdict, so the generation a rollback needs is still there.

The root program runs as a real process that is SIGKILLed mid-grace; the stand-in generations
are profile symlink trees (``health_support``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from health_support import Generations
from root_support import Host, RootRun, commit
from support import wait_for

from nixfleet_agent.root import main as root_main

LONG_GRACE = 600  # root is killed long before this ends


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("SHIM_CALLS", str(tmp_path / "calls"))
    return Host(tmp_path)


def configure(host: Host, gens: Generations, grace: int = LONG_GRACE, extra: str = "") -> None:
    config = host.tmp / "agent.toml"
    config.write_text(f"[health]\nenable = true\ngrace_period = {grace}\nno_failed_units = false\n"
                      f"require_reconnect = false\n{gens.healthy_check()}{extra}")
    config.chmod(0o644)
    nix_store = host.bin / "nix-store"
    nix_store.write_text('#!/bin/sh\nprintf "nix-store %s\\n" "$*" >> "$SHIM_CALLS"\n')
    nix_store.chmod(0o755)
    host.extra = ["--config", str(config), "--nix-env", str(gens.nix_env), "--system-profile", str(gens.profile),
                  "--current-system", str(gens.current_link), "--nix-store", str(nix_store),
                  "--health-interval", "0.2"]


def killed_in_grace(host: Host, gens: Generations, runs: list[RootRun], request_id: str) -> str:
    """Start a switch to a bad generation and SIGKILL root while its checks wait; the new generation."""
    gens.env("bad")
    host.write(host.good(id=request_id))
    run = RootRun(host)
    runs.append(run)
    wait_for(lambda: (host.out / request_id / "health.json").exists(), 60, "root to start the health checks")
    new = gens.current()
    assert gens.running() == "bad gen2" and new.endswith("gen2-bad")
    run.proc.kill()
    run.proc.wait()
    return new


def test_the_boot_default_is_the_previous_generation_until_the_checks_pass(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens, grace=5)
    first = gens.current()
    gens.env("good")
    host.write(host.good(id="pin-1"))
    assert root_main.main(host.argv()) == 0
    new = gens.current()
    # the rebuild activates gen2, root points the boot default back at gen1 for the grace period,
    # and at gen2 again once the checks passed
    assert gens.stc_log() == ["gen2-good switch", "gen1-good boot", "gen2-good boot"]
    assert gens.boot_default() == new != first
    assert "the previous generation is the boot default until the checks pass" in host.log("pin-1")
    assert not (host.root_dir / "health-pending.json").exists()

    gens.stc_calls.write_text("")
    gens.env("bad")
    host.write(host.good(id="pin-2"))
    assert root_main.main(host.argv()) == 1
    assert gens.stc_log() == ["gen3-bad switch", f"{Path(new).name} boot", f"{Path(new).name} switch"]
    assert gens.boot_default() == new and gens.current() == new


def test_root_stopped_during_the_grace_period_is_rolled_back_by_finalize(
        host: Host, runs: list[RootRun], monkeypatch: pytest.MonkeyPatch) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens)
    first = gens.current()
    killed_in_grace(host, gens, runs, "kg-1")
    assert gens.boot_default() == first  # pinned: a reboot now would start gen1

    monkeypatch.setenv("SERVICE_RESULT", "signal")
    monkeypatch.setenv("EXIT_CODE", "killed")
    monkeypatch.setenv("EXIT_STATUS", "KILL")
    assert root_main.main([*host.argv(), "--finalize"]) == 0
    assert gens.current() == first and gens.running() == "good gen1"
    result = host.result("kg-1")
    assert result["exit_code"] == 1 and result["health"] == "failed" and result["rolled_back"] is True
    assert result["error"].startswith("health: interrupted: root was stopped (SERVICE_RESULT=signal, "
                                      "EXIT_CODE=killed, EXIT_STATUS=KILL) before the health checks decided")
    assert f"rolled back to the previous generation {first}" in result["error"]
    assert [e["commit"] for e in result["bad_commits"]] == [host.commit]
    assert "health: the switch of kg-1 was interrupted" in host.log("kg-1")  # appended for the agent to stream
    assert "try-restart --no-block nixfleet-agent.service" in host.shim_calls()
    assert not (host.root_dir / "health-pending.json").exists()

    # the commit is remembered: refused before anything is built
    gens.env("bad")
    host.write(host.good(id="kg-2"))
    assert root_main.main(host.argv()) == 1
    assert host.result("kg-2")["error"].startswith(f"bad_commit: commit {host.commit} failed")


def test_a_restart_during_the_grace_period_boots_the_previous_generation_and_the_next_run_records_it(
        host: Host, runs: list[RootRun], monkeypatch: pytest.MonkeyPatch) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens)
    first = gens.current()
    killed_in_grace(host, gens, runs, "rb-1")
    # a hard reset: no ExecStopPost=; the machine boots its boot default, which is gen1
    booted = gens.boot_default()
    assert booted == first
    gens.current_link.unlink()
    gens.current_link.symlink_to(booted)
    gens.active.write_text(Path(booted, "state").read_text())
    monkeypatch.setattr("nixfleet_agent.health.pending.boot_id", lambda: "another-boot")
    gens.stc_calls.write_text("")

    gens.env("bad")
    host.write(host.good(id="rb-2"))  # the agent, back after the restart, asks for the same commit
    assert root_main.main(host.argv()) == 1
    interrupted = host.result("rb-1")
    assert interrupted["health"] == "failed" and interrupted["rolled_back_to"] == first
    assert interrupted["error"].startswith("health: interrupted: the host restarted before the health checks decided")
    assert gens.current() == first and gens.running() == "good gen1"
    assert gens.stc_log() == ["gen1-good boot"]  # already running gen1: only the boot entries, no activation
    refused = host.result("rb-2")
    assert refused["exit_code"] == 2 and refused["error"].startswith(f"bad_commit: commit {host.commit} failed")
    assert "health: the switch of rb-1 was interrupted: the host restarted" in host.log("rb-2")


def test_a_build_killed_before_the_profile_moved_is_not_a_bad_commit(
        host: Host, runs: list[RootRun], monkeypatch: pytest.MonkeyPatch) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens)
    first = gens.current()
    gens.env("bad")
    monkeypatch.setenv("HEALTH_BUILD_SLEEP", "60")
    host.write(host.good(id="kb-1"))
    run = RootRun(host)
    runs.append(run)
    wait_for(lambda: "stand-in nixos-rebuild" in (host.out / "kb-1" / "output.log").read_text()
             if (host.out / "kb-1" / "output.log").exists() else False, 60, "the build to start")
    run.proc.kill()
    run.proc.wait()
    assert root_main.main([*host.argv(), "--finalize"]) == 0
    result = host.result("kb-1")
    assert "ended without a result" in result["error"] and "health" not in result
    assert gens.current() == first and not (host.root_dir / "bad-commits.json").exists()
    assert not (host.root_dir / "health-pending.json").exists()


def test_retention_waits_for_the_verdict(host: Host) -> None:
    """keep_generations = 1 with gc: deleting generations before the checks decided would delete
    (and collect) the generation a rollback goes back to."""
    gens = Generations(host.tmp, host.bin)
    configure(host, gens, grace=5, extra="[retention]\nkeep_generations = 1\ngc = true\n")
    first = gens.current()
    gens.env("bad")
    host.write(host.good(id="rt-1"))
    assert root_main.main(host.argv()) == 1
    assert host.result("rt-1")["rolled_back"] is True and gens.current() == first
    assert not [c for c in host.shim_calls() if "--delete-generations" in c or c.startswith("nix-store")]
    assert Path(first).is_dir()

    newer = commit(host.origin, {"README": "fix"}, "fix")
    gens.env("good")
    host.write(host.good(id="rt-2", commit=newer))
    assert root_main.main(host.argv()) == 0
    calls = host.shim_calls()
    assert any("--delete-generations +1" in c for c in calls) and "nix-store --gc" in calls
    assert json.loads((host.out / "rt-2" / "result.json").read_text())["health"] == "passed"


def test_a_stop_from_the_dashboard_during_the_grace_period_goes_back_at_once(
        host: Host, runs: list[RootRun]) -> None:
    """The agent's cancel request reaches root while its checks wait: root does not sit out the
    grace period, it goes back, and the commit (which failed nothing yet) is not remembered."""
    gens = Generations(host.tmp, host.bin)
    configure(host, gens)
    first = gens.current()
    gens.env("bad")
    host.write(host.good(id="cn-1"))
    run = RootRun(host)
    runs.append(run)
    wait_for(lambda: (host.out / "cn-1" / "health.json").exists(), 60, "root to start the health checks")
    tmp = host.request_dir / ".cancel.tmp"
    tmp.write_text(json.dumps({"id": "cn-1"}))
    tmp.rename(host.request_dir / "cancel.json")
    code, err = run.wait(timeout=60)  # the grace period is 600 s
    assert code == 1, err
    result = host.result("cn-1")
    assert result["exit_code"] == 143 and result["rolled_back"] is True and result["bad_commits"] == []
    assert result["error"].startswith("health: interrupted: cancelled by stop/kill from the dashboard")
    assert "is not remembered as bad" in result["error"]
    assert gens.current() == first and gens.running() == "good gen1" and gens.boot_default() == first

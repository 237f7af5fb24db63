"""Every command's messages, in order, from a real agent driven by the reference dashboard."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cmd_support import kinds

HOST = "test-host"


def test_pull_messages_in_order(session) -> None:
    session.start()
    status, records = session.run("pull")
    assert status["status"] == "ok" and status["exit_code"] == 0
    assert kinds(records)[0] == "progress:pull:in_progress"
    assert kinds(records)[-3:] == ["progress:pull:complete", "output", "status"]
    lines = session.lines(records, "pull")
    assert "📊 Post-validation: Checking goal achievement..." in lines
    assert all(r.payload["command"] == "pull" for r in records if r.type == "output")
    assert len(status.get("generation", "")) == 7


def test_switch_runs_nixos_rebuild_and_reregisters(session) -> None:
    session.start()
    agent_pid = session.agent.pid
    regs = session.dash.hosts[HOST].registrations
    status, records = session.run("switch")
    assert status["status"] == "ok", status
    calls = session.shims.calls("nixos-rebuild")
    repo = Path(session.agent.env["NIXFLEET_STATE_DIR"]) / "repo"
    assert calls[-1]["argv"] == ["switch", "--flake", f"{repo}#{HOST}"]
    assert calls[-1]["sid"] == calls[-1]["pgid"] != os.getsid(agent_pid)  # detached: its own session
    assert kinds(records)[:2] == ["progress:system:in_progress", "output"]
    assert kinds(records)[-3:] == ["progress:system:complete", "output", "status"]
    lines = session.lines(records)
    assert "building the system configuration..." in lines and "switch done" in lines
    assert "✅ Switch completed successfully" in lines
    # the dashboard completes a switch only on a new register; the package did not change: same PID
    session.dash.wait_for(lambda: session.dash.hosts[HOST].registrations > regs, timeout=10)
    assert session.agent.running() and session.agent.pid == agent_pid


def test_failed_switch_reports_error_and_agent_stays(session) -> None:
    session.start()
    session.shims.set("rebuild_exit", 3)
    status, records = session.run("switch")
    assert status["status"] == "error" and status["exit_code"] == 3
    assert "progress:system:error" in kinds(records)
    assert any("builder for" in line for line in session.lines(records))
    assert session.agent.running()


def test_rebuild_command_override(session, tmp_path: Path) -> None:
    session.start(NIXFLEET_REBUILD_COMMAND="darwin-rebuild")
    status, _ = session.run("switch")
    assert status["status"] == "ok"
    assert session.shims.calls("darwin-rebuild")[-1]["argv"][:2] == ["switch", "--flake"]


def test_home_manager_switch_restarts_only_when_agent_package_changed(session, tmp_path: Path) -> None:
    home = tmp_path
    old, new = tmp_path / "pkg-old" / "nixfleet-agent", tmp_path / "pkg-new" / "nixfleet-agent"
    for path in (old, new):
        path.parent.mkdir()
        path.write_text(f"#!/bin/sh\necho nixfleet-agent {path.parent.name}\n")
        path.chmod(0o755)
    link = home / ".nix-profile" / "bin" / "nixfleet-agent"
    link.parent.mkdir(parents=True)
    link.symlink_to(old)
    session.start(NIXFLEET_PLATFORM="home-manager", NIXFLEET_RESTART_EXIT_CODE="0")
    mark = session.send("switch")  # package unchanged: stays, re-registers
    assert session.status_of("switch", mark).payload["status"] == "ok"
    assert session.shims.calls("home-manager")[-1]["argv"][:2] == ["switch", "--flake"]
    session.wait_reregistered(mark)  # as the dashboard does
    assert session.agent.running()
    session.shims.set("swap_agent", str(new))
    mark = session.send("switch")
    session.status_of("switch", mark)
    assert session.agent.wait(10) == 0  # the configured restart exit code
    assert any("restarts" in line for line in session.lines(session.dash.messages(since=mark)))


def test_unknown_command_names_it(session) -> None:
    session.start()
    status, _ = session.run("frobnicate")
    assert status == {"status": "error", "command": "frobnicate", "exit_code": 1,
                      "message": "unknown command: frobnicate", **({"generation": status["generation"]} if "generation" in status else {})}
    assert session.agent.running()


def test_refresh_commands(session) -> None:
    session.start()
    status, records = session.run("refresh-git")
    assert status["message"] == "git status check is dashboard-side"
    assert session.lines(records) == ["Git status is checked by dashboard (GitHub API)"]
    status, records = session.run("refresh-lock")
    assert status["status"] == "ok" and status["message"] == "ok"
    assert session.lines(records)[-1].startswith("✓ Lock status: ok (Updated today")
    status, records = session.run("refresh-all")
    assert status["message"] == "all refreshed"
    assert [l.split(":")[0] for l in session.lines(records)] == ["Refreshing all status checks...", "✓ Lock", "✓ System"]


def test_refresh_system_home_manager(session, tmp_path: Path) -> None:
    profiles = tmp_path / ".local/state/nix/profiles"
    gen = tmp_path / "store" / "hm-gen-5"
    gen.mkdir(parents=True)
    profiles.mkdir(parents=True)
    (profiles / "home-manager-5-link").symlink_to(gen)
    (profiles / "home-manager").symlink_to("home-manager-5-link")
    session.start(NIXFLEET_PLATFORM="home-manager")
    session.shims.set("nix_build_out", str(gen))
    status, records = session.run("refresh-system")
    assert status["message"] == "ok"
    assert session.lines(records)[-1] == "✓ System status: ok (Home Manager is current)"
    argv = session.shims.calls("nix")[-1]["argv"]
    assert argv[0] == "build" and "--dry-run" in argv and argv[-1].endswith(f"#homeConfigurations.{HOST}.activationPackage")
    session.shims.set("nix_build_out", "/nix/store/other")
    status, records = session.run("refresh-system")
    assert session.lines(records)[-1] == "✓ System status: outdated (Home Manager needs switch)"


def test_check_version(session, tmp_path: Path) -> None:
    import nixfleet_agent

    fake = tmp_path / ".nix-profile" / "bin" / "nixfleet-agent"
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!/bin/sh\necho nixfleet-agent {nixfleet_agent.version()}\n")
    fake.chmod(0o755)
    session.start(NIXFLEET_PLATFORM="home-manager")
    status, _ = session.run("check-version")
    assert status["status"] == "ok" and status["message"].startswith("running=")
    fake.write_text("#!/bin/sh\necho nixfleet-agent 0.0.1\n")
    status, _ = session.run("check-version")
    assert status["status"] == "warning" and status["exit_code"] == 0
    assert "installed=0.0.1" in status["message"]


def _op_log_of(session, command: str) -> str:
    """The newest op log of ``command`` (each starts with ``# <command> <time>``)."""
    logs = sorted((Path(session.agent.env["NIXFLEET_STATE_DIR"]) / "logs").glob("*.log"))
    texts = [p.read_text() for p in logs if p.read_text().startswith(f"# {command} ")]
    assert texts, f"no op log for {command} among {[p.name for p in logs]}"
    return texts[-1]


def test_restart_sends_status_then_exits(session) -> None:
    session.start()
    status, _ = session.run("restart")
    assert status["status"] == "ok"
    assert session.agent.wait(10) == 101
    log = _op_log_of(session, "restart")  # like every command, it leaves its op log
    assert "♻️  Restarting agent (exit 101)..." in log and "# status=ok exit_code=0 message=restarting" in log


def test_reboot_does_not_block_the_message_loop(session) -> None:
    session.start()
    mark = session.send("reboot")
    # the message loop stays free during the 3 s delay: a command sent after it finishes first
    session.dash.send_command(HOST, "refresh-git")
    refreshed = session.status_of("refresh-git", mark)
    reboot = session.status_of("reboot", mark, timeout=10)
    assert refreshed.index < reboot.index
    status = reboot.payload
    assert status["status"] == "ok"
    assert session.shims.calls("systemctl")[-1]["argv"] == ["reboot"]


def test_reboot_failure_is_reported(session) -> None:
    session.start()
    session.shims.set("reboot_exit", 1)
    mark = session.send("reboot")
    status = session.status_of("reboot", mark, timeout=10).payload
    assert status["status"] == "error" and "reboot failed" in status["message"]
    assert any(l.startswith("❌ Reboot failed") for l in session.lines(session.dash.messages(since=mark)))
    assert session.agent.running()
    log = _op_log_of(session, "reboot")  # the tool's own error line too, not only the dashboard's copy
    assert "Failed to reboot system via logind: Access denied" in log, log
    assert "# status=error exit_code=1" in log


def test_rollback_nixos(session) -> None:
    session.start()
    status, records = session.run("rollback")
    assert status["status"] == "ok"
    assert session.shims.calls("nixos-rebuild")[-1]["argv"] == ["switch", "--rollback"]
    assert session.lines(records)[0] == "🔄 Rolling back to previous generation..."


def _hm_profile(tmp_path: Path, shims, gens: int) -> Path:
    profiles = tmp_path / ".local/state/nix/profiles"
    profiles.mkdir(parents=True)
    for n in range(1, gens + 1):
        gen = tmp_path / "store" / f"hm-{n}"
        gen.mkdir(parents=True)
        act = gen / "activate"
        act.write_text(f'#!/bin/sh\necho "{n}" >> "{shims.dir}/activated"\necho "Activating generation {n}"\n')
        act.chmod(act.stat().st_mode | stat.S_IXUSR)
        (profiles / f"home-manager-{n}-link").symlink_to(gen)
    if gens:
        (profiles / "home-manager").symlink_to(f"home-manager-{gens}-link")
    return profiles


def test_macos_rollback_with_12_generations_picks_11(session, tmp_path: Path) -> None:
    _hm_profile(tmp_path, session.shims, 12)
    session.start(NIXFLEET_PLATFORM="home-manager")
    status, records = session.run("rollback")
    assert status["status"] == "ok", status
    assert (session.shims.dir / "activated").read_text().split() == ["11"]
    assert "Activating generation 11" in session.lines(records)


def test_macos_rollback_refuses_without_previous_generation(session, tmp_path: Path) -> None:
    _hm_profile(tmp_path, session.shims, 1)
    session.start(NIXFLEET_PLATFORM="home-manager")
    status, _ = session.run("rollback")
    assert status["status"] == "error" and status["message"] == "no previous generation"
    assert not (session.shims.dir / "activated").exists()


def test_agent_updated_out_of_band_restarts_on_the_next_switch(session, tmp_path: Path) -> None:
    """Issue 13 item 3: the restart rule compares with what this process was started from."""
    old, new = tmp_path / "pkg-old" / "nixfleet-agent", tmp_path / "pkg-new" / "nixfleet-agent"
    for path in (old, new):
        path.parent.mkdir()
        path.write_text(f"#!/bin/sh\necho nixfleet-agent {path.parent.name}\n")
        path.chmod(0o755)
    link = tmp_path / ".nix-profile" / "bin" / "nixfleet-agent"
    link.parent.mkdir(parents=True)
    link.symlink_to(old)
    session.start(NIXFLEET_PLATFORM="home-manager", NIXFLEET_RESTART_EXIT_CODE="0")
    tmp = link.with_name(".swap")
    tmp.symlink_to(new)
    os.replace(tmp, link)  # an admin updated the agent; the running process is still the old one
    mark = session.send("switch")  # this switch itself changes nothing
    assert session.status_of("switch", mark).payload["status"] == "ok"
    assert session.agent.wait(10) == 0  # restarted to run what is installed

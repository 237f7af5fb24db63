"""Every request root accepts ends with a result (issue 13): the started marker, ``--finalize``
(the unit's ``ExecStopPost=``) for a run that was killed, the overall deadline from root's trusted
configuration, and the agent's cancel request (``cancel.json``), read like the request itself.

The root program runs as a real process here (``python -m nixfleet_agent.root``, as the unit runs
it) with a stand-in ``nixos-rebuild`` that records its pid and its background child's pid, so a
test can check the whole process group is gone afterwards."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from root_support import ID, Host, RootRun, pythonpath
from support import wait_for

from nixfleet_agent.root import watch

# A slow build: records its pid and a background grandchild's, says so, then waits. With
# SHIM_IGNORE_TERM set the whole group ignores SIGTERM, so only SIGKILL ends it.
SLOW = """#!/bin/sh
[ -n "$SHIM_IGNORE_TERM" ] && trap '' TERM
sleep 300 &
echo "$$ $!" > "$SHIM_PIDS"
echo "slow build started"
while :; do sleep 1; done
"""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("SHIM_CALLS", str(tmp_path / "calls"))
    host = Host(tmp_path)
    slow = host.bin / "nixos-rebuild"
    slow.write_text(SLOW)
    monkeypatch.setenv("SHIM_PIDS", str(tmp_path / "pids"))
    return host


def build_pids(host: Host) -> tuple[int, int]:
    text = wait_for(lambda: (host.tmp / "pids").exists() and (host.tmp / "pids").read_text().strip(), 30,
                    "the stand-in nixos-rebuild to start")
    leader, child = text.split()
    return int(leader), int(child)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie whose parent (the killed root run) is gone is reaped by init shortly; it runs nothing
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def start_slow(host: Host, runs: list[RootRun], *extra: str, env: dict[str, str] | None = None) -> RootRun:
    host.write(host.good())
    run = RootRun(host, *extra, env=env)
    runs.append(run)
    build_pids(host)
    return run


def write_cancel(host: Host, doc: object, name: str = "cancel.json") -> Path:
    path = host.request_dir / name
    tmp = host.request_dir / f".{name}.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------- started marker


def test_root_writes_a_started_marker_before_it_builds(host: Host, runs: list[RootRun]) -> None:
    run = start_slow(host, runs)
    marker = host.out / ID / "started.json"
    doc = json.loads(marker.read_text())  # there while the build runs, before any result
    assert doc["id"] == ID and doc["action"] == "switch" and doc["pid"] == run.proc.pid
    assert doc["timeout"] == watch.DEFAULT_TIMEOUT and str(doc["started_at"]).endswith("Z")
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600 and marker.stat().st_uid == os.geteuid()
    assert not (host.out / ID / "result.json").exists()
    assert json.loads((host.root_dir / "current.json").read_text())["id"] == ID  # for --finalize


def test_a_finished_run_leaves_nothing_for_finalize(host: Host) -> None:
    (host.bin / "nixos-rebuild").write_text("#!/bin/sh\necho quick\n")
    host.write(host.good())
    assert host.run() == 0
    assert not (host.root_dir / "current.json").exists()
    before = (host.out / ID / "result.json").read_text()
    assert RootRunFinalize(host, SERVICE_RESULT="success", EXIT_CODE="exited", EXIT_STATUS="0") == 0
    assert (host.out / ID / "result.json").read_text() == before  # never overwritten


# ---------------------------------------------------------------------------- --finalize


def RootRunFinalize(host: Host, **env: str) -> int:  # noqa: N802 - reads like the unit line
    full = dict(os.environ, PYTHONPATH=pythonpath(), **env)
    return subprocess.run([sys.executable, "-m", "nixfleet_agent.root", *host.argv(), "--finalize"], env=full,
                          capture_output=True, timeout=60, check=False).returncode


def test_finalize_writes_the_result_a_killed_run_left_out(host: Host, runs: list[RootRun]) -> None:
    """What ExecStopPost= sees after `systemctl kill`: the main process died by SIGKILL, its build
    group was ended by systemd (here: by the test), and no result.json exists."""
    run = start_slow(host, runs)
    leader, child = build_pids(host)
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait()
    os.killpg(leader, signal.SIGKILL)
    assert not (host.out / ID / "result.json").exists()  # without --finalize the agent would wait for ever
    assert RootRunFinalize(host, SERVICE_RESULT="signal", EXIT_CODE="killed", EXIT_STATUS="KILL") == 0
    result = host.result()
    assert result["id"] == ID and result["action"] == "switch" and result["exit_code"] == 1
    assert result["error"] == (f"the privileged run of {ID} ended without a result "
                               "(SERVICE_RESULT=signal, EXIT_CODE=killed, EXIT_STATUS=KILL)")
    info = (host.out / ID / "result.json").stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert not (host.root_dir / "current.json").exists()
    wait_for(lambda: gone(child), 10, "the build's background child to end")


def test_finalize_without_an_accepted_request_does_nothing(host: Host) -> None:
    assert RootRunFinalize(host, SERVICE_RESULT="exit-code", EXIT_CODE="exited", EXIT_STATUS="2") == 0
    assert not host.out.exists() or not list(host.out.iterdir())


# ---------------------------------------------------------------------------- deadline


def test_deadline_ends_the_build_group_and_says_so(host: Host, runs: list[RootRun]) -> None:
    run = start_slow(host, runs, "--timeout", "2")
    leader, child = build_pids(host)
    code, err = run.wait()
    assert code == 1, err
    result = host.result()
    assert result["exit_code"] == watch.DEADLINE_EXIT
    assert result["error"].startswith("deadline: the privileged run exceeded its deadline of 2s"), result
    assert "deadline: " in host.log()
    assert gone(leader) and wait_for(lambda: gone(child), 5, "the background child to be killed")
    assert not (host.root_dir / "current.json").exists()


def test_deadline_escalates_to_sigkill_for_a_build_ignoring_sigterm(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process (``watch.TERM_GRACE`` shortened): SIGTERM is ignored by the whole group."""
    monkeypatch.setattr(watch, "TERM_GRACE", 0.5)
    monkeypatch.setenv("SHIM_IGNORE_TERM", "1")
    host.extra = ["--timeout", "1"]
    host.write(host.good())
    assert host.run() == 1
    leader, child = build_pids(host)
    assert host.result()["exit_code"] == watch.DEADLINE_EXIT
    assert gone(leader) and wait_for(lambda: gone(child), 5, "the background child to be killed")


def test_deadline_comes_from_roots_config_not_the_request(host: Host, runs: list[RootRun]) -> None:
    config = host.tmp / "agent.toml"
    config.write_text('privileged_timeout = 2\n')
    config.chmod(0o644)
    host.write({**host.good(), "timeout": 99999})  # an agent asking for more is refused outright
    assert RootRun(host, "--config", str(config)).wait()[0] == 2
    assert host.result()["error"] == "timeout: unknown field"
    host.write(host.good(id="with-config"))
    run = RootRun(host, "--config", str(config))
    runs.append(run)
    run.wait()
    result = host.result("with-config")
    assert result["exit_code"] == watch.DEADLINE_EXIT and "deadline of 2s" in result["error"], result


def test_a_bad_timeout_in_the_config_is_one_clear_line(host: Host) -> None:
    config = host.tmp / "agent.toml"
    config.write_text('privileged_timeout = "soon"\n')
    config.chmod(0o644)
    host.write(host.good())
    code, err = RootRun(host, "--config", str(config)).wait()
    assert code == 2 and "Traceback" not in err
    assert host.rejected()["error"].startswith("config: privileged_timeout: must be a positive number of seconds")
    assert not host.request.exists()


# ---------------------------------------------------------------------------- cancel


def test_cancel_ends_the_running_build_group(host: Host, runs: list[RootRun]) -> None:
    run = start_slow(host, runs)
    leader, child = build_pids(host)
    cancel = write_cancel(host, {"id": ID})
    code, err = run.wait()
    assert code == 1, err
    result = host.result()
    assert result["exit_code"] == watch.CANCELLED_EXIT
    assert result["error"] == "cancelled by stop/kill from the dashboard"
    assert not cancel.exists()  # consumed
    assert gone(leader) and wait_for(lambda: gone(child), 5, "the background child to be killed")


def test_a_cancel_before_root_started_builds_nothing(host: Host) -> None:
    write_cancel(host, {"id": ID})
    host.write(host.good())
    assert host.run() == 1
    assert host.result()["error"] == watch.CANCELLED
    assert not (host.tmp / "pids").exists() and host.builds() == []


def test_hostile_cancel_files_are_not_honoured_and_do_not_stop_the_watch(host: Host, runs: list[RootRun]) -> None:
    """A cancel for another id, a symlink to a real cancel, a FIFO, a hard link and a directory:
    each is taken out of the path and ignored; the build keeps running; a real one then ends it."""
    run = start_slow(host, runs)
    path = host.request_dir / "cancel.json"
    elsewhere = host.tmp / "elsewhere.json"
    elsewhere.write_text(json.dumps({"id": ID}))

    def consumed(what: str) -> None:
        wait_for(lambda: not os.path.lexists(path), 10, f"root to take the {what} cancel out of the path")
        assert run.proc.poll() is None, f"a {what} cancel ended the run"

    write_cancel(host, {"id": "another-request"})
    consumed("wrong-id")
    write_cancel(host, {"id": ID, "extra": 1})
    consumed("extra-field")
    path.symlink_to(elsewhere)
    consumed("symlink")
    assert elsewhere.exists()  # the link, never its target
    os.mkfifo(path)
    consumed("FIFO")
    os.link(elsewhere, path)
    consumed("hard-link")
    path.mkdir()
    wait_for(lambda: not path.exists(), 10, "root to move the directory aside")
    assert run.proc.poll() is None
    assert not (host.out / ID / "result.json").exists()
    write_cancel(host, {"id": ID})
    code, err = run.wait()
    assert host.result()["error"] == watch.CANCELLED, err
    for event in ("cancel-ignored", "cancel-refused"):
        assert f"event={event}" in err, err

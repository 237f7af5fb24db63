"""Switch and rollback as on-disk *operations* that survive the agent.

Why: a switch replaces the agent's own package and unit; Home Manager boots the agent out in the
middle of activation; systemd may restart it. A rebuild that is the agent's child, writing into the
agent's pipes, dies with it or is killed by SIGPIPE (upstream P1920). So:

1. The operation is recorded in ``operations/<id>.json`` *before* it starts (id, command, target
   commit, pre-switch generation and system path, installed-agent fingerprint, log and result
   paths); the launcher's PID is added once known.
2. A *launcher* starts it outside the agent's process tree, under the switch wrapper
   (``ops/switchwrapper.py``: stdin ``/dev/null``, stdout+stderr appended to ``logs/<id>.log``
   within ``op_log_max_mb``, ``operations/<id>.result`` written atomically when the rebuild exits):
   ``detached`` - the wrapper in its own session; under a systemd user manager (Home Manager on
   Linux) in its own transient user unit instead (``ops/transient.py``, the record names the
   unit), because a session stays in the agent unit's cgroup and dies with any restart of it.
   ``privileged`` - NixOS and nix-darwin: writes ``privileged/request.json`` for the root unit and follows
   ``<privileged_dir>/<id>/output.log`` and ``result.json`` (contract in docs/root-boundary.md).
3. The agent streams the operation by following the log file (read to EOF, then wait 50 ms; the
   rebuild's output reaches the dashboard within tens of milliseconds) and keeps the offset of the
   last whole line it emitted in ``operations/<id>.offset`` (at most once a second, and always on
   shutdown, which waits for it), so a restarted agent resumes where the previous one stopped
   instead of replaying the whole log. Only an agent killed outright (SIGKILL, power loss) repeats
   up to a second of lines: at least once, never lost.
4. When the result exists and the log is drained, the final status is reported and the record is
   marked ``reported`` - a restarted agent finds unreported records and reports each exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .. import log as logmod
from . import liveness, rootwatch
from .journal import (Operation, expected_paths, load_all, mark_reported, ops_dir, prune, save, switch_unit,
                      unreported, valid_id)
from ..privatefs import ensure_private_dir, write_private
from .oplog import MAX_BYTES
from .runner import CHUNK, LineSplitter, Result, child_env

# the journal's API, re-exported: callers keep using ``operations.save`` etc.
__all__ = ["Operation", "load_all", "mark_reported", "ops_dir", "prune", "save", "switch_unit", "unreported",
           "valid_id"]

_log = logmod.get("operations")

FOLLOW_TICK = 0.05
OFFSET_SAVE_EVERY = 1.0
PICKUP_TIMEOUT = 60.0  # privileged request not consumed within this -> the root unit is missing
LIVENESS_EVERY = 2.0  # how often a privileged follow asks systemd whether the root unit still runs

# The wrapper program (a script, run by path: it outlives the agent; see its docstring).
WRAPPER_PATH = Path(__file__).with_name("switchwrapper.py")


def wrapper_argv(*args: str) -> list[str]:
    """How the wrapper is run: this interpreter in isolated mode (no PYTHON* variables, user site
    or script directory on sys.path; it loads only the standard library and ``logcap.py``)."""
    return [sys.executable, "-I", str(WRAPPER_PATH), *args]


def write_launch(op: Operation, max_bytes: int, env: dict[str, str] | None = None) -> Path:
    """``operations/<id>.launch``: what the wrapper runs (private; it removes the file once read)."""
    path = Path(op.result_path).with_suffix(".launch")
    job: dict[str, object] = {"result": op.result_path, "log": op.log_path, "cwd": op.cwd, "argv": op.argv,
                              "max_bytes": max_bytes}
    if env is not None:
        job["env"] = env
    write_private(path, json.dumps(job), durable=True)
    return path


def read_result(path: Path) -> Result | None:
    """Parse a result file written by the wrapper or the privileged unit; None while absent."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return Result(exit_code=1, start_error=f"unreadable result file {path}: {exc}")
    if not isinstance(data, dict) or not isinstance(data.get("exit_code"), int):
        return Result(exit_code=1, start_error=f"result file {path} has no integer exit_code")
    sig = data.get("signal")
    err = data.get("error")
    return Result(exit_code=data["exit_code"], signal=sig if isinstance(sig, int) else None,
                  start_error=str(err) if err else None)


def boot_time() -> float | None:
    """When the machine booted (epoch seconds), or None if unknown.

    A record older than the boot belongs to a switch the reboot interrupted: its PID may have been
    reused, and no result will ever appear.
    """
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "kern.boottime"], capture_output=True, text=True, timeout=5, check=False).stdout
            return float(out.split("sec =")[1].split(",")[0])
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            return None
    return None


def interrupted_by_reboot(op: Operation) -> bool:
    booted = boot_time()
    return booted is not None and booted > op.started_at


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # our own child that already exited is a zombie until reaped: reap it, it is dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


class Launcher(Protocol):
    name: str

    def start(self, op: Operation) -> int | None: ...


class DetachedLauncher:
    """Where there is no user manager (macOS, a bare Linux session): the wrapper in its own session."""

    name = "detached"

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes

    def start(self, op: Operation) -> int | None:
        ensure_private_dir(Path(op.log_path).parent)
        proc = subprocess.Popen(
            wrapper_argv(str(write_launch(op, self.max_bytes))),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, env=child_env(),
        )
        return proc.pid


class PrivilegedLauncher:
    """NixOS / nix-darwin: ask the root side via ``<state_dir>/privileged/request.json`` (atomic rename)."""

    name = "privileged"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)

    def start(self, op: Operation) -> int | None:
        request: dict[str, object] = {"id": op.id, "action": op.action, "commit": op.commit,
                                      "flake_attr": op.flake_attr}
        if op.refresh:  # only when asked, so a plain switch stays readable by an older root unit
            request["refresh"] = True
        if op.update_lock:
            request["update_lock"] = True
        if op.command in ("force-rebuild", "force-update"):  # health: switch a bad commit anyway
            request["force"] = True
        write_private(self.request_path(), json.dumps(request, indent=1), durable=True)
        return None

    def request_path(self) -> Path:
        return request_path(self.state_dir)


def request_path(state_dir: Path) -> Path:
    """Where the agent drops a request for the root side (NixOS path unit / nix-darwin WatchPaths)."""
    return Path(state_dir) / "privileged" / "request.json"


def rejected_path(privileged_dir: Path) -> Path:
    """Where the root unit reports a request it could not even attribute to an id."""
    return Path(privileged_dir) / "rejected.json"


def paths_for(state_dir: Path, privileged_dir: Path, op_id: str, launcher: str) -> tuple[Path, Path]:
    """(log, result) paths for an operation under the given launcher (the journal's one rule)."""
    return expected_paths(state_dir, op_id, launcher, privileged_dir)


def load_offset(state_dir: Path, op: Operation) -> int:
    try:
        return int((ops_dir(state_dir) / f"{op.id}.offset").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def save_offset(state_dir: Path, op: Operation, offset: int) -> None:
    try:
        write_private(ops_dir(state_dir) / f"{op.id}.offset", str(offset))
    except OSError:
        pass


def follow(
    state_dir: Path,
    op: Operation,
    emit: Callable[[str], None],
    stop_event: threading.Event,
    killed_by: Callable[[], int | None] = lambda: None,
    request_path: Path | None = None,
    timeout: float = rootwatch.DEFAULT_TIMEOUT,
) -> Result | None:
    """Stream the operation's log via ``emit`` until its result exists and the log is drained.

    Returns None when ``stop_event`` is set first (the agent is shutting down; the record stays
    unreported for the next agent). ``killed_by()`` names a signal the agent itself sent, so an
    operation whose wrapper was SIGKILLed (no result file) is reported as killed by it.
    """
    log_path, result_path = Path(op.log_path), Path(op.result_path)
    offset = load_offset(state_dir, op)
    splitter = LineSplitter(emit)
    saved_at = time.monotonic()
    dirty = False
    unreadable = False
    fh = None
    waited_since = time.monotonic()
    checked_at, dead = time.monotonic(), 0
    unit = (liveness.UnitWatch(op.unit, user=True, pid=op.pid, alive=pid_alive, every=LIVENESS_EVERY)
            if op.unit else None)
    root = (rootwatch.RootWatch(state_dir, op, timeout, killed_by)
            if op.launcher == "privileged" and request_path is not None else None)
    try:
        while True:
            if fh is None and not unreadable:
                try:
                    fh = open(log_path, "rb")  # noqa: SIM115 - kept open across turns, closed in finally
                    fh.seek(offset)
                except FileNotFoundError:
                    fh = None
                except OSError as exc:  # e.g. a root-only log: report once, then wait for the result only
                    unreadable = True
                    emit(f"(cannot read {log_path}: {exc.strerror or exc}; waiting for the result only)")
            data = fh.read(CHUNK) if fh is not None else b""
            if data:
                splitter.feed(data)
                offset += len(data)
                dirty = True
                if time.monotonic() - saved_at >= OFFSET_SAVE_EVERY:
                    save_offset(state_dir, op, offset - splitter.pending_bytes())
                    saved_at, dirty = time.monotonic(), False
                continue
            if dirty and not splitter.pending() and time.monotonic() - saved_at >= OFFSET_SAVE_EVERY:
                # idle at a line boundary: remember exactly where (at most once a second)
                save_offset(state_dir, op, offset - splitter.pending_bytes())
                saved_at, dirty = time.monotonic(), False
            result = read_result(result_path)
            if result is not None:
                if fh is None and not unreadable and log_path.exists():  # created after our last attempt
                    continue
                if fh is not None and fh.read(1):  # written between our last read and the result
                    fh.seek(-1, os.SEEK_CUR)
                    continue
                splitter.close()
                save_offset(state_dir, op, offset - splitter.pending_bytes())
                return result
            if unit is not None:  # a transient unit: ask the user manager (with the pid as fallback)
                gone = unit.ended()
                if gone is not None and read_result(result_path) is None:
                    splitter.close()
                    save_offset(state_dir, op, offset - splitter.pending_bytes())
                    return Result(exit_code=1, start_error=gone)
            elif op.launcher == "detached" and not pid_alive(op.pid):
                if read_result(result_path) is not None:
                    continue
                splitter.close()
                save_offset(state_dir, op, offset - splitter.pending_bytes())
                sig = killed_by()
                if sig is not None:
                    return Result(exit_code=128 + sig, signal=sig)
                return Result(exit_code=1, start_error="the switch process ended without writing a result "
                                                         "(killed outside the agent?)")
            if op.launcher == "privileged" and request_path is not None and fh is None:
                if request_path.exists() and time.monotonic() - waited_since > PICKUP_TIMEOUT:
                    try:
                        request_path.unlink()
                    except OSError:
                        pass
                    return Result(exit_code=1, start_error=(
                        "privileged switch request was not picked up within "
                        f"{PICKUP_TIMEOUT:.0f}s (is nixfleet-agent-privileged.path enabled?)"))
                refusal = _rejection(rejected_path(Path(op.log_path).parent.parent), op)
                if refusal is not None and not request_path.exists():
                    return Result(exit_code=2, start_error=f"privileged switch request rejected: {refusal}")
            if (op.launcher == "privileged" and request_path is not None and not request_path.exists()
                    and time.monotonic() - checked_at >= LIVENESS_EVERY):
                checked_at = time.monotonic()
                state = liveness.unit_state()
                dead = dead + 1 if liveness.ended(state) else 0
                if dead >= 2 and read_result(result_path) is None:  # twice: never a unit between requests
                    splitter.close()
                    save_offset(state_dir, op, offset - splitter.pending_bytes())
                    state = state or {}
                    return Result(exit_code=1, start_error=(
                        f"the privileged unit {liveness.PRIVILEGED_UNIT} ended without a result "
                        f"(ActiveState={state.get('ActiveState')}, Result={state.get('Result', '?')})"))
            ended = root.poll() if root is not None else None
            if ended is not None and read_result(result_path) is None:  # started marker, cancel, deadline
                splitter.close()
                save_offset(state_dir, op, offset - splitter.pending_bytes())
                return ended
            if stop_event.wait(FOLLOW_TICK):
                save_offset(state_dir, op, offset - splitter.pending_bytes())
                return None
    finally:
        if fh is not None:
            fh.close()


def _rejection(path: Path, op: Operation) -> str | None:
    """The root unit's ``rejected.json`` if it answers *this* request (same id, or no usable id
    and written after we asked)."""
    try:
        if path.stat().st_mtime < op.started_at - 1:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("id", op.id) != op.id:
        return None
    return str(doc.get("error") or "refused")


def signal_group(pid: int, signum: int) -> str | None:
    """Signal the process group led by ``pid`` (never our own); returns an error text or None."""
    try:
        pgid = os.getpgid(pid)
        if pgid == os.getpgid(0):
            os.kill(pid, signum)  # shares the agent's group (never ours): signal only the process
        else:
            os.killpg(pgid, signum)
    except ProcessLookupError:
        return None
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


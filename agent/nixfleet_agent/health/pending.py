"""A health-gated switch whose verdict root never reached is undone: the pending record.

Why: root decided in one process. When that process was stopped during the switch or its grace
period (``systemctl stop``, the OOM killer, a shutdown) or the host restarted (the new
configuration hung it and a watchdog reset it, a power cut), nothing decided: the host kept the
new, unchecked generation, and so did the boot loader. A host a flight away that the new
configuration broke would stay broken. Now:

1. before the rebuild root writes ``<state-dir>/health-pending.json`` (root's, in its ``0700``
   directory): request id and owner, commit, the previous generation, boot id and pid;
2. after a successful activation and before the checks the gate makes the *previous* generation
   the boot loader's default again (``nix.boot_default``), so a restart during the grace period
   boots the generation known to be good; a pass makes the new one the default again;
3. the verdict (pass or rollback) removes the record;
4. a record still there is an interrupted gate. ``--finalize`` (``ExecStopPost=``: the main run
   ended however it ended) and the start of every later root run (a hard reset skips
   ``ExecStopPost=``) call :func:`recover`: when the profile or the running system is not the
   previous generation, the profile is set back, the previous generation is activated (while the
   host shuts down only made the boot default, which it already is), the commit goes on the bad
   list, and the request gets a result that says so.

A killed build that never moved the profile is not a failure of the commit: nothing is rolled
back or recorded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import log, nix
from ..names import valid_id
from ..ops.attached import boot_id
from . import badlist

_log = log.get("health")
PENDING = "health-pending.json"
MAX_BYTES = 4096
STEP_TIMEOUT = 600  # seconds for one recovery step (an activation) outside the main run's watch
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Pending:
    id: str
    owner: int
    commit: str
    previous: str  # store path of the generation before the switch
    boot_id: str
    pid: int
    since: str
    new: str = ""  # the rebuild's generation, once it is known (after the rebuild)


@dataclass(frozen=True)
class System:
    """How root undoes a switch: trusted arguments only, never anything from the record but paths
    it wrote itself."""

    profile: Path
    current: Path  # /run/current-system
    nix_env: str = "nix-env"
    systemctl: str = "systemctl"
    darwin: bool = False
    env: Mapping[str, str] | None = None


@dataclass
class Recovered:
    """What the interrupted request's result says."""

    id: str
    owner: int
    error: str
    fields: dict[str, object]


def begin(state_dir: Path, record: Pending) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = state_dir / f".{PENDING}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(record), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, state_dir / PENDING)


def new(request_id: str, owner: int, commit: str, previous: str) -> Pending:
    return Pending(request_id, owner, commit, previous, boot_id(), os.getpid(),
                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def clear(state_dir: Path) -> None:
    try:
        (state_dir / PENDING).unlink()
    except FileNotFoundError:
        pass


def load(state_dir: Path) -> Pending | None:
    """The record, or None; a damaged one is logged and removed (root wrote it: damage means a
    crash mid-write of an older format, nothing to act on)."""
    path = state_dir / PENDING
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _log.error("pending-unreadable", path=str(path), error=exc.strerror or str(exc))
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    try:
        doc = json.loads(data.decode("utf-8")) if len(data) <= MAX_BYTES else None
        record = Pending(**doc) if isinstance(doc, dict) else None
    except (UnicodeDecodeError, ValueError, TypeError):
        record = None
    if (record is None or not valid_id(record.id) or type(record.owner) is not int
            or not isinstance(record.commit, str) or not _COMMIT.fullmatch(record.commit)
            or not isinstance(record.previous, str) or not record.previous.startswith("/")
            or not isinstance(record.boot_id, str) or type(record.pid) is not int or not isinstance(record.since, str)
            or not isinstance(record.new, str)):
        _log.error("pending-damaged", path=str(path), content=data[:200].decode("utf-8", "replace"))
        clear(state_dir)
        return None
    return record


def interrupted_by(record: Pending) -> str:
    """Why the record's run never decided, as far as this process can tell."""
    if record.boot_id and record.boot_id != boot_id():
        return "the host restarted"
    return f"root's run (pid {record.pid}) ended"


Say = Callable[["Pending", str], None]  # (the record, line): into its request's output.log


def recover(state_dir: Path, system: System, bad: badlist.BadList, why: str | None, say: Say,
            remember: bool = True) -> Recovered | None:
    """Undo the switch of a leftover record (see the module's docstring); None when there was none
    or its switch never changed the system. ``why`` completes "the switch was interrupted: ..."
    (default: :func:`interrupted_by`)."""
    record = load(state_dir)
    if record is None:
        return None
    try:
        return _recover(record, system, bad, why or interrupted_by(record), lambda line: say(record, line), remember)
    finally:
        clear(state_dir)


def _recover(record: Pending, system: System, bad: badlist.BadList, why: str, say: Callable[[str], None],
             remember: bool) -> Recovered | None:
    previous = record.previous
    profile_now, running = _real(system.profile), _real(system.current)
    if profile_now == previous and running == previous:
        _log.info("pending-nothing-changed", id=record.id, why=why)
        return None
    if record.new and profile_now not in (previous, record.new) and running not in (previous, record.new):
        _log.warn("pending-superseded", id=record.id, profile=profile_now, running=running,
                  error="the system was changed since; not touched")
        return None
    what = f"interrupted: {why} before the health checks decided"
    _log.warn("pending-recover", id=record.id, commit=record.commit, why=why, profile=profile_now, running=running)
    say(f"health: the switch of {record.id} was {what}; rolling back to {previous}")
    problems: list[str] = []
    if profile_now != previous:
        _step(nix.set_profile(system.profile, previous, nix_env=system.nix_env), system, say, problems)
    activate = running != previous and not _shutting_down(system)
    if not problems:
        _step(nix.activate(previous, darwin=system.darwin) if activate or system.darwin else nix.boot_default(previous),
              system, say, problems)
    entries = bad.add(record.commit, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), what) if remember \
        else bad.load()
    fields: dict[str, object] = {"health": "failed", "rolled_back": not problems, "failed_checks": [what],
                                 "bad_commits": [e.as_dict() for e in entries]}
    short = record.commit[:7]
    refused = (f"commit {short} is refused on this host until a newer commit or force" if remember
               else f"commit {short} is not remembered as bad")
    if problems:
        fields["rollback_error"] = "; ".join(problems)
        say(f"health: ROLLBACK FAILED ({'; '.join(problems)})")
        return Recovered(record.id, record.owner, f"health: {what}; rollback to {previous} FAILED "
                         f"({'; '.join(problems)}); {refused}", fields)
    fields["rolled_back_to"] = previous
    if activate and not system.darwin:
        _step(nix.restart_agent(system.systemctl), system, say, [])
    when = "" if activate or running == previous else " (the boot default; it runs after the next reboot)"
    say(f"health: rolled back to {previous}{when}; {refused}")
    return Recovered(record.id, record.owner, f"health: {what}; rolled back to the previous generation {previous}"
                     f"{when}; {refused}", fields)


def _step(argv: list[str], system: System, say: Callable[[str], None], problems: list[str]) -> None:
    say(f"running {' '.join(argv)}")
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=dict(system.env if system.env is not None else os.environ), cwd="/",
                              timeout=STEP_TIMEOUT, check=False, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        problems.append(f"{argv[0]}: {getattr(exc, 'strerror', None) or exc}")
        return
    for line in proc.stdout.decode("utf-8", "replace").splitlines()[-50:]:
        say(f"  {line}")
    if proc.returncode != 0:
        problems.append(f"{' '.join(argv[-2:])} exited {proc.returncode}")


def _shutting_down(system: System) -> bool:
    if system.darwin:
        return False
    try:
        proc = subprocess.run(nix.system_state(system.systemctl), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.stdout.strip() == "stopping"


def _real(path: Path) -> str:
    return os.path.realpath(path) if os.path.lexists(path) else ""

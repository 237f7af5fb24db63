"""Attached commands that outlive an agent killed uncleanly (issue 13 item 4).

Why: an attached command (``test``, ``pull``, ``update``, ...) runs its children in their own
session, so a SIGKILL of the agent (OOM killer, ``kill -9``, launchd, a crash) leaves them running
with nobody reading their output, and its final ``status`` is never sent: the dashboard keeps
waiting and the compartment stays "unknown, stale" for ever. Switches have the operation journal
(``ops/journal.py``) for this; attached commands get a smaller record of their own here:

``<state_dir>/attached/<op-id>.json`` is written (private, atomic, fsync'd) when the command starts,
before its first child, updated with each child's pid, process group and process start time once it
runs, and removed as soon as the command's final status is in the durable outbox (from there the
link journal owns it). A record found at start therefore means the previous agent died while that
command ran; :func:`recover` then

* ends the command's process group if it still runs: SIGTERM, SIGKILL after :data:`GRACE`. A
  process is only signalled when its process start time and boot id match the record, so a pid the
  kernel has since given to an unrelated process is never touched;
* reports a final ``status`` error naming what happened (killed agent, reboot) and sets the
  command's compartment to error (Tests is not left "unknown, stale").

Records are validated on read like the operation journal's, and a bad one is quarantined with the
same function (``journal.quarantine``): a file the agent wrote itself never crashes or misdirects it.
A record whose id has an operation record is left to that journal (a switch once it was launched);
one without (killed during ``pull-switch``'s pull, before the launch) is reported here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from .. import log as logmod
from ..privatefs import write_private
from ..redact import redact
from . import journal

_log = logmod.get("attached")

DIR_NAME = "attached"
GRACE = 3.0  # SIGTERM -> SIGKILL for a group left behind by a killed agent
MAX_RECORD = 64 * 1024
# the compartment a command shows "working" in while it runs (what must not stay stale)
COMPARTMENT = {"test": "tests", "refresh-lock": "lock", **dict.fromkeys(
    ("switch", "pull-switch", "rollback", "force-update", "force-rebuild"), "system")}
_LABEL = {"tests": "Tests", "lock": "Lock refresh", "system": "Switch"}


@dataclass
class Record:
    id: str  # the command's op/log id (logs/<id>.log)
    command: str
    agent_pid: int
    boot_id: str
    started_at: float = field(default_factory=time.time)
    pid: int | None = None  # the child running now (or last), its group and start time
    pgid: int | None = None
    start_time: int | None = None  # Linux: clock ticks after boot (/proc/<pid>/stat field 22); else epoch s
    final: list[Any] | None = None  # [status, exit_code, message] while the final status is handed over


class StatusSink(Protocol):
    def status(self, command: str, status: Any, exit_code: int, message: str = "") -> None: ...


class Compartments(Protocol):
    def set(self, compartment: str, status: str, message: str) -> None: ...


def records_dir(state_dir: Path) -> Path:
    return Path(state_dir) / DIR_NAME


# ----- process identity ------------------------------------------------------------------------


@cache
def boot_id() -> str:
    """Something that changes on every boot: Linux's random boot id, else the boot time."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read(64).strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["/usr/sbin/sysctl", "-n", "kern.boottime"], capture_output=True, text=True,
                                 timeout=5, stdin=subprocess.DEVNULL, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.split("}")[0].strip("{ ").replace(" ", "") if "sec" in out else ""
    return ""


@dataclass(frozen=True)
class Proc:
    pid: int
    pgid: int
    sid: int | None  # None where it cannot be read (ps on macOS)
    start_time: int
    zombie: bool = False


def _proc_stat(pid: str) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            rest = fh.read().rsplit(b")", 1)[1].split()
        # after "(comm)": state ppid pgrp session ... starttime is field 22 overall, index 19 here
        return Proc(int(pid), int(rest[2]), int(rest[3]), int(rest[19]), rest[0] == b"Z")
    except (OSError, IndexError, ValueError):
        return None


def _ps_table() -> list[Proc]:
    """Every process from ``ps`` (no ``/proc``: macOS). ``lstart`` has one-second resolution."""
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,pgid=,stat=,lstart="], capture_output=True, text=True,
                             timeout=10, stdin=subprocess.DEVNULL, check=False, env={"LC_ALL": "C", "PATH": "/bin:/usr/bin"})
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_ps(out.stdout)


def parse_ps(text: str) -> list[Proc]:
    procs = []
    for line in text.splitlines():
        parts = line.split(None, 3)
        if len(parts) != 4:
            continue
        try:
            start = int(time.mktime(time.strptime(" ".join(parts[3].split()), "%a %b %d %H:%M:%S %Y")))
            procs.append(Proc(int(parts[0]), int(parts[1]), None, start, parts[2].startswith("Z")))
        except (ValueError, OverflowError):
            continue
    return procs


def processes() -> list[Proc]:
    try:
        names = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return _ps_table()
    return [p for p in map(_proc_stat, names) if p is not None]


def identify(pid: int) -> Proc | None:
    if os.path.isdir("/proc/self"):
        return _proc_stat(str(pid))
    return next((p for p in _ps_table() if p.pid == pid), None)


# ----- the record's life -------------------------------------------------------------------------


def begin(state_dir: Path, op_id: str, command: str) -> Record | None:
    """When the command starts. None for a name that is no command (answered at once, runs nothing);
    raises OSError (the caller says so and goes on)."""
    if not journal._NAME_RE.fullmatch(command):
        return None
    record = Record(id=op_id, command=command, agent_pid=os.getpid(), boot_id=boot_id())
    _save(state_dir, record, durable=True)
    return record


def child_started(state_dir: Path, record: Record, pid: int) -> None:
    """The child runs: remember what identifies its group. Not fsync'd: only a kernel crash would lose
    it, and after a reboot the group is gone anyway (the fsync'd record still says "interrupted")."""
    proc = identify(pid)
    record.pid, record.pgid, record.start_time = pid, (proc.pgid if proc else pid), (proc.start_time if proc else None)
    try:
        _save(state_dir, record, durable=False)
    except OSError as exc:
        _log.warn("attached_record_write_failed", command=record.command, error=exc.strerror or str(exc))


def finalize(state_dir: Path, record: Record, status: str, exit_code: int, message: str) -> None:
    """Just before the final status is handed to the outbox: if the agent dies between the hand-over
    and :func:`finish`, the next one re-sends this same status (a duplicate the dashboard ignores)
    instead of contradicting it with "interrupted". Redacted: the record is a state file."""
    record.final = [status, exit_code, redact(message)]
    try:
        _save(state_dir, record, durable=True)
    except OSError as exc:
        _log.warn("attached_record_write_failed", command=record.command, error=exc.strerror or str(exc))


def finish(state_dir: Path, record: Record) -> None:
    """The final status is in the durable outbox (or the command ended without one)."""
    try:
        os.unlink(records_dir(state_dir) / f"{record.id}.json")
    except FileNotFoundError:
        pass
    except OSError as exc:
        _log.warn("attached_record_remove_failed", command=record.command, error=exc.strerror or str(exc))


def _save(state_dir: Path, record: Record, *, durable: bool) -> None:
    if not journal.valid_id(record.id):
        raise ValueError(f"invalid operation id {record.id!r}")
    write_private(records_dir(state_dir) / f"{record.id}.json", json.dumps(asdict(record)), durable=durable)


FINAL_STATUSES = ("ok", "error", "stopped", "warning")
_INT = ("agent_pid",)
_OPT_INT = ("pid", "pgid", "start_time")


def parse(data: object, stem: str) -> Record:
    """A validated Record from a decoded ``<stem>.json``, or journal.BadRecord naming the field."""
    if not isinstance(data, dict):
        raise journal.BadRecord(f"not a JSON object (got {type(data).__name__})")
    missing = [k for k in ("id", "command", "agent_pid", "boot_id") if k not in data]
    if missing:
        raise journal.BadRecord(f"missing field(s) {', '.join(missing)}")
    values: dict[str, Any] = {}
    for f in fields(Record):
        if f.name not in data:
            continue
        value = data[f.name]
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if f.name in _INT or f.name in _OPT_INT:
            low = 0 if f.name == "start_time" else 1
            ok = (is_int and value >= low) or (f.name in _OPT_INT and value is None)
        elif f.name == "final":
            ok = value is None or (isinstance(value, list) and len(value) == 3 and value[0] in FINAL_STATUSES
                                   and isinstance(value[1], int) and not isinstance(value[1], bool)
                                   and isinstance(value[2], str))
        elif f.name == "started_at":
            ok = (is_int or isinstance(value, float)) and value == value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise journal.BadRecord(f"field {f.name} has the wrong type or value (got {type(value).__name__})")
        values[f.name] = value
    record = Record(**values)
    if not journal.valid_id(record.id) or record.id != stem:
        raise journal.BadRecord(f"id {record.id[:80]!r} is not a plain name equal to the file name {stem!r}")
    if not journal._NAME_RE.fullmatch(record.command):
        raise journal.BadRecord(f"field command is not a command name (got {record.command[:40]!r})")
    if (record.pid is None) != (record.pgid is None):
        raise journal.BadRecord("fields pid and pgid must both be set or both be null")
    return record


def load(state_dir: Path) -> list[Record]:
    """Every valid record, oldest first; a bad one is quarantined (``<name>.bad``)."""
    try:
        paths = sorted(records_dir(state_dir).glob("*.json"))
    except OSError:
        return []
    out = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_RECORD + 1)
            if len(raw) > MAX_RECORD:
                raise ValueError(f"larger than {MAX_RECORD} bytes")
            data = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            continue
        except OSError as exc:
            _log.warn("attached_record_unreadable", file=str(path), error=exc.strerror or str(exc))
            continue
        except ValueError as exc:
            journal.quarantine(path, f"not a JSON record: {str(exc)[:120]}")
            continue
        try:
            out.append(parse(data, path.stem))
        except journal.BadRecord as exc:
            journal.quarantine(path, str(exc))
    return sorted(out, key=lambda r: r.started_at)


# ----- the next start ------------------------------------------------------------------------------


def group_members(record: Record) -> list[Proc] | None:
    """The live processes of the record's group, or None when its pid now belongs to someone else.

    The leader's pid is the group id (own session). While the leader lives, its start time must be
    the recorded one; once it is gone, a member counts only if it is in the same group *and* session
    and started no earlier than the leader (a pid is not reused while its group exists)."""
    if record.pid is None or record.pgid is None or record.start_time is None:
        return []
    procs = processes()
    leader = next((p for p in procs if p.pid == record.pid and not p.zombie), None)
    if leader is not None and (leader.start_time != record.start_time or leader.pgid != record.pgid):
        return None
    return [p for p in procs if p.pgid == record.pgid and not p.zombie and p.start_time >= record.start_time
            and (p.sid is None or p.sid == record.pgid)]


def end_group(record: Record, grace: float = GRACE) -> str:
    """SIGTERM the recorded group, SIGKILL what is left after ``grace``; how it went, in words."""
    members = group_members(record)
    if members is None:
        _log.warn("attached_pid_reused", command=record.command, pid=record.pid, hint="not signalled")
        return "its processes had already ended (the pid now belongs to another process, which was left alone)"
    if not members:
        return "its processes had already ended"
    assert record.pgid is not None
    _signal(record.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_members(record):
        time.sleep(0.05)
    left = group_members(record)
    if left:
        _signal(record.pgid, signal.SIGKILL)
        return f"its processes were ended ({len(members)} process(es); SIGKILL after {grace:g}s)"
    return f"its processes were ended ({len(members)} process(es), SIGTERM)"


def _signal(pgid: int, signum: int) -> None:
    if pgid <= 1 or pgid == os.getpgid(0):
        return  # never init's group or our own (a hand-edited record could name either)
    try:
        os.killpg(pgid, signum)
    except OSError:
        pass


def describe(record: Record, grace: float = GRACE) -> tuple[str, str]:
    """(cause, message) for the command's final status; ends the group first if it still runs."""
    what = f"`{record.command}` ran" + (f" (pid {record.pid})" if record.pid else "")
    here = boot_id()
    if record.boot_id and here and record.boot_id != here:
        return "by reboot", f"interrupted by reboot: the host restarted while {what}"
    if record.pid is None:
        return "(the agent was killed)", f"interrupted: the agent was killed while {what}; no process of it was recorded"
    return "(the agent was killed)", f"interrupted: the agent was killed while {what}; {end_group(record, grace)}"


def recover(state_dir: Path, reporter: StatusSink, compartments: Compartments | None = None,
            grace: float = GRACE) -> list[str]:
    """At start: report every attached command the previous agent did not finish (see module doc)."""
    messages = []
    for record in load(state_dir):
        if record.agent_pid == os.getpid():
            continue  # ours (recover called twice): still running
        if (journal.ops_dir(state_dir) / f"{record.id}.json").exists():
            _log.info("attached_record_superseded", command=record.command, op_id=record.id)
            finish(state_dir, record)  # a switch took over: the operation journal reports it
            continue
        if record.final is not None:  # died while handing over its real status: send that (again)
            _log.warn("attached_status_resent", command=record.command, op_id=record.id, status=record.final[0])
            reporter.status(record.command, record.final[0], record.final[1], record.final[2])
            finish(state_dir, record)
            messages.append(record.final[2])
            continue
        cause, message = describe(record, grace)
        _log.warn("attached_command_interrupted", command=record.command, op_id=record.id, pid=record.pid or "",
                  message=message)
        area = COMPARTMENT.get(record.command)
        if area is not None and compartments is not None:
            compartments.set(area, "error", f"{_LABEL[area]} interrupted {cause}")
        reporter.status(record.command, "error", 1, message)
        finish(state_dir, record)  # only now: the status is in the durable outbox
        messages.append(message)
    return messages

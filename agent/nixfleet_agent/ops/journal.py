"""The operation journal: ``<state_dir>/operations/<id>.json``, one record per switch/rollback.

Why a separate module: the records are files the agent wrote itself, but a disk fault, a restored
backup or an older/newer agent can leave them truncated or with fields of the wrong type, and a
record's id is used to build paths (``<id>.offset``, ``logs/<id>.log``). So every record is checked
*on read*, before anything is built from it:

- the id must be a plain name (``[A-Za-z0-9._-]{1,64}``, not starting with ``.``, the root side's
  rule) and equal the file's own name, so ``../../escape`` never becomes a path;
- every field must have its declared type (``pid`` a positive int or null, ``argv`` a list of
  strings, ...), ``launcher`` one of the two launchers, the log/result paths exactly the ones the
  agent derives for that id and launcher, and ``unit`` empty or exactly :func:`switch_unit` of the id;
- a record that fails is *quarantined* (renamed to ``<name>.bad`` next to it) and logged once with
  the reason: a restarted agent neither re-reports it as an "internal error" on every start nor
  trips over it again. ``nixfleet-agent status`` lists quarantined records.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import log as logmod
from ..kinds import LAUNCHERS, Action, LaunchMode
from ..names import valid_id
from .. import privatefs
from ..privatefs import QUARANTINE_SUFFIX, write_private

_log = logmod.get("journal")

# One rule for an operation id, shared with the root side's request check (root/request.py).
_NAME_RE = re.compile(r"[a-z][a-z-]{0,31}")  # command and action names
KEEP_REPORTED = 20
KEEP_QUARANTINED = 20


@dataclass
class Operation:
    id: str
    command: str  # the dashboard's command name (switch, pull-switch, rollback, force-update, ...)
    action: Action  # what the privileged side is asked to do
    argv: list[str]
    launcher: LaunchMode
    log_path: str
    result_path: str
    cwd: str = ""
    commit: str = ""
    pre_generation: str = ""
    pre_system: str = ""
    agent_before: str = ""
    flake_attr: str = ""
    refresh: bool = False  # privileged: build bypassing Nix's negative narinfo cache (force-*)
    update_lock: bool = False  # privileged force-update: root refreshes the agent's input before building
    pid: int | None = None
    unit: str = ""  # detached in a transient user unit: its name (switch_unit(id)); "" for a session
    # Home Manager: user units already failed before the switch, so the health checks of an agent
    # that restarts mid-gate still count only what the switch broke (health/agentside.py)
    failed_before: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    reported: bool = False

    def __post_init__(self) -> None:
        # read back from JSON as plain strings: an unknown value is a ValueError (a bad record)
        self.action = Action(self.action)
        self.launcher = LaunchMode(self.launcher)


class BadRecord(ValueError):
    """A journal record that cannot be trusted; the message names the field."""


def ops_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "operations"


def expected_paths(state_dir: Path, op_id: str, launcher: str, privileged_dir: Path) -> tuple[Path, Path]:
    """(log, result) paths of an operation: the only ones a record may name."""
    if launcher == "privileged":
        base = Path(privileged_dir) / op_id
        return base / "output.log", base / "result.json"
    return Path(state_dir) / "logs" / f"{op_id}.log", ops_dir(state_dir) / f"{op_id}.result"


def switch_unit(op_id: str) -> str:
    """The transient user unit a detached operation runs in (ops/transient.py): the only unit name
    a record may name, so a record can never point the agent at another unit."""
    return f"nixfleet-agent-switch-{op_id}.service"


def _check_type(name: str, value: Any, kind: str) -> None:
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "argv": isinstance(value, list) and all(isinstance(a, str) for a in value),
        "pid": value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0),
        "time": isinstance(value, (int, float)) and not isinstance(value, bool) and value == value,
    }[kind]
    if not ok:
        raise BadRecord(f"field {name} has the wrong type (got {type(value).__name__})")


_KINDS = {"argv": "argv", "failed_before": "argv", "pid": "pid", "started_at": "time", "refresh": "bool", "update_lock": "bool",
          "reported": "bool"}
_REQUIRED = ("id", "command", "action", "argv", "launcher", "log_path", "result_path")


def parse(data: object, stem: str, state_dir: Path, privileged_dir: Path | None = None) -> Operation:
    """A validated Operation from a decoded record named ``<stem>.json``, or BadRecord. With the
    configured ``privileged_dir`` a privileged record must name exactly root's paths of its id
    there (without it, only their shape is checked: a tool reading a journal without the config)."""
    if not isinstance(data, dict):
        raise BadRecord(f"not a JSON object (got {type(data).__name__})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise BadRecord(f"missing field(s) {', '.join(missing)}")
    values: dict[str, Any] = {}
    for f in fields(Operation):
        if f.name in data:
            _check_type(f.name, data[f.name], _KINDS.get(f.name, "str"))
            values[f.name] = data[f.name]
    try:
        op = Operation(**values)
    except ValueError as exc:
        raise BadRecord(str(exc)) from None
    if not valid_id(op.id) or op.id != stem:
        raise BadRecord(f"id {op.id[:80]!r} is not a plain name equal to the file name {stem!r}")
    if op.launcher not in LAUNCHERS:
        raise BadRecord(f"launcher must be one of {', '.join(LAUNCHERS)} (got {op.launcher[:40]!r})")
    for name in ("command", "action"):
        if not _NAME_RE.fullmatch(getattr(op, name)):
            raise BadRecord(f"field {name} is not a command name (got {getattr(op, name)[:40]!r})")
    if op.unit and (op.launcher != "detached" or op.unit != switch_unit(op.id)):
        raise BadRecord(f"unit {op.unit[:80]!r} is not the switch unit of this id")
    log_path, result_path = Path(op.log_path), Path(op.result_path)
    if privileged_dir is None:
        privileged_dir = log_path.parent.parent if op.launcher == "privileged" else Path("/")
    if ".." in log_path.parts or (log_path, result_path) != expected_paths(
        state_dir, op.id, op.launcher, privileged_dir
    ):
        raise BadRecord("log_path/result_path are not the paths of this id and launcher")
    return op


def save(state_dir: Path, op: Operation) -> None:
    if not valid_id(op.id):  # never build a path from an unchecked id, not even our own
        raise ValueError(f"invalid operation id {op.id!r}")
    write_private(ops_dir(state_dir) / f"{op.id}.json", json.dumps(asdict(op), indent=1), durable=True)


def quarantine(path: Path, reason: str) -> None:
    """Move a bad record aside (``<name>.bad``) and say so once; it is never read again."""
    privatefs.quarantine(path, reason, "operation_record")


def load_all(state_dir: Path, privileged_dir: Path | None = None) -> list[Operation]:
    """All valid operation records, oldest first; a bad one is quarantined (see module doc)."""
    out: list[Operation] = []
    try:
        paths = sorted(ops_dir(state_dir).glob("*.json"))
    except OSError:
        return out
    for path in paths:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(1 << 20)
            data = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            continue  # pruned or reported by a concurrent step
        except OSError as exc:
            _log.warn("operation_record_unreadable", file=str(path), error=exc.strerror or str(exc))
            continue
        except ValueError as exc:  # truncated, not UTF-8, not JSON
            quarantine(path, f"not a JSON record: {str(exc)[:120]}")
            continue
        try:
            out.append(parse(data, path.stem, state_dir, privileged_dir))
        except BadRecord as exc:
            quarantine(path, str(exc))
    return out


def quarantined(state_dir: Path) -> list[Path]:
    try:
        return sorted(ops_dir(state_dir).glob("*" + QUARANTINE_SUFFIX))
    except OSError:
        return []


def unreported(state_dir: Path, privileged_dir: Path | None = None) -> list[Operation]:
    return [op for op in load_all(state_dir, privileged_dir) if not op.reported]


def mark_reported(state_dir: Path, op: Operation, privileged_dir: Path | None = None) -> None:
    op.reported = True
    save(state_dir, op)
    # a launch file the wrapper never read (the agent died before the launch) carries an environment
    try:
        (ops_dir(state_dir) / f"{op.id}.launch").unlink(missing_ok=True)
    except OSError:
        pass
    prune(state_dir, privileged_dir=privileged_dir)


def prune(state_dir: Path, keep: int = KEEP_REPORTED, privileged_dir: Path | None = None) -> None:
    """Keep the newest ``keep`` reported records (with their result/offset files) and the newest
    quarantined ones, so the journal stays bounded."""
    done = [op for op in load_all(state_dir, privileged_dir) if op.reported]
    directory = ops_dir(state_dir)
    for op in done[: max(0, len(done) - keep)]:
        for suffix in (".json", ".result", ".offset", ".launch"):
            try:
                (directory / f"{op.id}{suffix}").unlink()
            except OSError:
                pass
    bad = quarantined(state_dir)
    for path in bad[: max(0, len(bad) - KEEP_QUARANTINED)]:
        try:
            path.unlink()
        except OSError:
            pass

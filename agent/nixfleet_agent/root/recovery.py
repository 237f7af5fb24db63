"""Root's side of an interrupted health gate (``health/pending.py``): when it is undone, where
its lines go and which result says so.

Three places call it: ``--finalize`` (``ExecStopPost=``: the main run was stopped during the
switch or its grace period), the start of every root run (a hard reset skipped
``ExecStopPost=``), and the end of a run that an exception ended (cancel or deadline while the
gate waited or rolled back).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from .. import log
from ..health import badlist, pending
from . import results

_log = log.get("privileged")
RESULT = "result.json"


def bad_list(state_dir: Path) -> badlist.BadList:
    return badlist.BadList(state_dir / "bad-commits.json")


def system(profile: Path, current: Path, *, nix_env: str, systemctl: str, darwin: bool,
           env: Mapping[str, str]) -> pending.System:
    return pending.System(profile=profile, current=current, nix_env=nix_env, systemctl=systemctl, darwin=darwin,
                          env=dict(env))


def recover_into_results(out_dir: Path, state_dir: Path, sys: pending.System, why: str | None,
                         out: BinaryIO | None = None, running: str = "",
                         remember: bool = True) -> pending.Recovered | None:
    """Recover a leftover record. Its lines go to ``out`` (the running request's log) or, without
    one, are appended to its own request's log; its request gets a result unless it has one or
    is the ``running`` request (whose own result takes the returned fields). ``remember``: put
    the commit on the bad list (not for a stop from the dashboard: the commit failed nothing)."""
    res = results.Results(out_dir)
    logs: dict[str, BinaryIO] = {}

    def say(record: pending.Pending, line: str) -> None:
        text = f"nixfleet-agent-privileged: {line}\n".encode()
        if out is not None:
            out.write(text)
            return
        op_dir = out_dir / record.id
        if record.id not in logs and op_dir.is_dir() and not op_dir.is_symlink():
            try:
                logs[record.id] = res.append_log(op_dir, record.owner)
            except OSError as exc:
                _log.warn("recovery-log-failed", id=record.id, error=exc.strerror or str(exc))
                return
        if record.id in logs:
            logs[record.id].write(text)

    try:
        got = pending.recover(state_dir, sys, bad_list(state_dir), why, say, remember=remember)
    finally:
        for handle in logs.values():
            handle.close()
    if got is not None and got.id != running:
        write_result(res, out_dir, got)
    return got


def write_result(res: results.Results, out_dir: Path, got: pending.Recovered) -> None:
    op_dir = out_dir / got.id
    try:
        if not op_dir.is_dir() or op_dir.is_symlink() or (op_dir / RESULT).exists():
            return
        res.write_json(op_dir, RESULT, {"id": got.id, "action": "switch", "exit_code": 1, "error": got.error,
                                        "finished_at": results.now(), **got.fields}, got.owner)
        _log.warn("recovered", id=got.id, error=got.error)
    except OSError as exc:
        _log.error("recovery-result-failed", id=got.id, error=f"{exc.filename or ''}: {exc.strerror or exc}")

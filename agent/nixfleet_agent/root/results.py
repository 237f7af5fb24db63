"""Where root answers the agent: ``<out-dir>/<id>/{output.log,result.json}`` and ``rejected.json``.

Build logs can hold anything a build prints, so they are for the requesting agent alone, not for
every local user (they used to be ``0644`` in a ``0755`` directory). The agent runs as a
DynamicUser whose uid root learns only from the request itself (the owner of the directory the
request sits in), and a group of its own cannot be named in a unit file. So:

- directories are root's, mode ``0711``: anyone may pass through, nobody but root may list or
  create in them (the agent knows the names it asked for; other users cannot enumerate them);
- each file is created by root with ``O_EXCL|O_NOFOLLOW`` in that root-owned directory, then
  ``fchown``-ed to the requesting uid with mode ``0600``: readable by that uid and root only.

The agent owning its result files lets it change or delete only what was written for it; it can
never make root write elsewhere, because root writes only through descriptors it opened itself in
directories no one else can write. Per-request directories are pruned to the newest ``keep``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o711
FILE_MODE = 0o600
KEEP = 20


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Results:
    def __init__(self, out_dir: Path, keep: int = KEEP) -> None:
        self.out_dir = out_dir
        self.keep = max(1, keep)

    def ensure(self) -> None:
        self.out_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.out_dir, DIR_MODE)

    def new_dir(self, request_id: str) -> Path | None:
        """The request's own directory, or None when the id was used before (a replay must not
        overwrite an earlier result)."""
        self.ensure()
        op_dir = self.out_dir / request_id
        try:
            op_dir.mkdir(mode=DIR_MODE)
        except FileExistsError:
            return None
        os.chmod(op_dir, DIR_MODE)
        return op_dir

    def open_log(self, op_dir: Path, owner: int) -> BinaryIO:
        return os.fdopen(_create(op_dir / "output.log", owner), "wb", buffering=0)

    def append_log(self, op_dir: Path, owner: int) -> BinaryIO:
        """More lines for a request's log after its run ended (``--finalize``): appended, so the
        agent following the file sees them; never through a link."""
        try:
            fd = os.open(op_dir / "output.log", os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = _create(op_dir / "output.log", owner)
        return os.fdopen(fd, "wb", buffering=0)

    def write_json(self, directory: Path, name: str, doc: Mapping[str, object], owner: int) -> None:
        """Atomically: a reader sees no file or the whole document."""
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        with os.fdopen(_create(tmp, owner), "w", encoding="utf-8") as handle:
            json.dump(doc, handle)
            handle.write("\n")
        os.replace(tmp, directory / name)

    def prune(self, current: str = "") -> list[str]:
        """Remove all but the newest ``keep`` request directories (never ``current``)."""
        try:
            entries = [p for p in self.out_dir.iterdir()
                       if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
        except OSError:
            return []
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        removed = []
        for old in entries[self.keep:]:
            if old.name != current:
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old.name)
        return removed


def _create(path: Path, owner: int) -> int:
    try:
        os.unlink(path)  # a stale temporary of a crashed run (root's own directory: no race)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    if owner != os.geteuid():
        os.fchown(fd, owner, -1)
    return fd

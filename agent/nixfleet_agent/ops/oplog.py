"""Per-operation log files in ``<state_dir>/logs``.

Why: the dashboard only keeps what reached it while the agent was connected, and a switch that
outlives the agent writes its output nowhere else. Every command therefore also appends its full
output to ``logs/<op-id>.log`` so ``nixfleet-agent status`` and a later agent process can show it.
Only the last :data:`KEEP` operations are kept so the state directory stays bounded.

Operation ids sort chronologically as strings (``20261121T235959Z-1a2b``), so rotation is a sort
by name, independent of file mtimes (which a restored backup or clock step can scramble).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import IO

from ..privatefs import ensure_private_dir
from . import logcap
from .logcap import Cap

KEEP = 20
MAX_BYTES = 50 * 1024 * 1024  # default per-operation bound (setting op_log_max_mb)
CHUNK_BUFFER = 64 * 1024
_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4,8}$")


def new_op_id(now: float | None = None) -> str:
    """A sortable, filesystem- and privileged-request-safe id (``[A-Za-z0-9._-]{1,64}``)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def logs_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "logs"


def rotate(state_dir: Path, keep: int = KEEP, protect: tuple[str, ...] = ()) -> list[Path]:
    """Delete all but the newest ``keep`` operation logs; returns the removed paths.

    ``protect`` names op ids that must survive (an operation still running or not yet reported).
    """
    logs = list_logs(state_dir)
    removed: list[Path] = []
    for path in logs[: max(0, len(logs) - keep)]:
        if path.stem in protect:
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def list_logs(state_dir: Path) -> list[Path]:
    """Operation logs, oldest first."""
    try:
        return sorted(p for p in logs_dir(state_dir).iterdir() if p.suffix == ".log" and _ID_RE.match(p.stem))
    except OSError:
        return []


class OpLog:
    """Append-only text log of one operation; thread-safe; never raises on write.

    A full disk must not fail a command: write errors are remembered (``error``) and further
    writes are skipped, the dashboard stream is unaffected.
    """

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.error: str | None = None
        self.max_bytes = max_bytes
        self.truncated = False
        self._cap = Cap(max_bytes)
        self._lock = threading.Lock()
        self._fh: IO[str] | None = None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            # block-buffered: the runner writes a whole chunk of lines, then flushes once
            self._fh = os.fdopen(fd, "a", encoding="utf-8", errors="replace", buffering=CHUNK_BUFFER)
            self._cap = logcap.opened(str(path), max_bytes)  # a reopened switch log counts what it holds
        except OSError as exc:
            self.error = f"cannot open {path}: {exc.strerror or exc}"

    def write(self, line: str, stream: str = "stdout", *, flush: bool = True) -> None:
        """Append one line. ``flush=False`` is for the runner, which flushes once per chunk it read
        from the child, so a 200,000-line command costs one write(2) per chunk, not per line."""
        del stream  # one combined stream on disk, like the detached switch's own log
        with self._lock:
            if self._fh is None:
                return
            try:
                # bounded by size as well as count (ops/logcap.py, the rule the switch wrapper
                # applies too): a chatty command (~100 MiB/min) must not fill the state dir; the
                # rest still streams to the dashboard
                kept, cut = self._cap.take((line + "\n").encode("utf-8", "replace"))
                if cut is not None or not kept:  # cut now, or already cut (a switch log the wrapper cut)
                    if cut is not None:
                        self._fh.write(cut)
                        self._fh.flush()
                    self.truncated = True
                    self._close_locked()
                    return
                self._fh.write(line + "\n")  # one line: all of it fits
                if flush:
                    self._fh.flush()
            except (OSError, ValueError) as exc:
                self.error = f"cannot write {self.path}: {exc}"
                self._close_locked()

    def flush(self) -> None:
        with self._lock:
            if self._fh is None:
                return
            try:
                self._fh.flush()
            except (OSError, ValueError) as exc:
                self.error = f"cannot write {self.path}: {exc}"
                self._close_locked()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None

    def __enter__(self) -> OpLog:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullLog(OpLog):
    """A log that discards everything (used when no state dir is available, e.g. ad-hoc runs)."""

    def __init__(self) -> None:
        self.path = Path(os.devnull)
        self.error = None
        self._lock = threading.Lock()
        self._fh = None
        self.max_bytes, self.truncated, self._cap = MAX_BYTES, False, Cap(MAX_BYTES)


def open_log(state_dir: Path, op_id: str | None = None, header: str | None = None,
             protect: tuple[str, ...] = (), max_bytes: int = MAX_BYTES) -> OpLog:
    """Create ``logs/<op-id>.log`` (rotating older ones, except ``protect``) and return it."""
    op_id = op_id or new_op_id()
    directory = ensure_private_dir(logs_dir(state_dir))
    rotate(state_dir, keep=KEEP - 1, protect=(op_id, *protect))
    log = OpLog(directory / f"{op_id}.log", max_bytes)
    if header:
        log.write(header)
    return log

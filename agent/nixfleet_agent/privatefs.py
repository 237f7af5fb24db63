"""Private files in the state directory: directories 0700, files 0600, written atomically.

Every file the agent keeps (state.json, operation records, offsets, op logs, privileged requests)
goes through here, so "a reader never sees half a file" and "nothing is group/world readable" hold
in one place. The repository's own stricter check (refuse a directory owned by someone else) is in
``repo.clone.ensure_private_dir``. A record the agent cannot use is moved aside once
(``quarantine``), never re-read on every start.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from . import log

_log = log.get("privatefs")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700; tighten an existing one we own."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if path.stat().st_uid == os.geteuid():
            path.chmod(0o700)
    except OSError:
        pass
    return path


def write_private(path: Path, text: str, *, durable: bool = False) -> None:
    """Atomic write (tmp + rename) with mode 0600. ``durable`` fsyncs before the rename, for records
    that must survive a power cut in the middle of a switch."""
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:  # the rename itself must survive a power cut too: fsync the directory
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


QUARANTINE_SUFFIX = ".bad"


def quarantine(path: Path, reason: str, event: str) -> Path | None:
    """Move a file the agent cannot use aside (``<stem>.bad``) and log it once as ``<event>_quarantined``;
    it is never read again, so a bad record costs one log line, not an error on every start."""
    target = path.with_name(path.stem + QUARANTINE_SUFFIX)
    try:
        os.replace(path, target)
    except OSError as exc:
        _log.warn(f"{event}_unusable", file=str(path), error=reason, quarantine_failed=exc.strerror or str(exc))
        return None
    _log.warn(f"{event}_quarantined", file=str(path), moved_to=str(target), error=reason)
    return target

"""The one thing the agent can hand root: ``<state>/privileged/request.json``, read and validated.

Root trusts nothing the agent wrote, and this file is the only agent-controlled path it opens: it
is opened without following symlinks (in every directory from ``/`` down), size-limited, removed
before use, and checked field by field against an allowlist. Whatever is there and is not a
request (a directory, a FIFO, a link; a ``privileged/`` that is a link) is moved out of the watched
path, so the path unit that started us does not fire again for it until systemd's trigger limit.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..kinds import Action
from ..names import HOSTNAME_RE, HOSTNAME_RULE, valid_id

# Exactly what the agent sends (commands/rebuild.py, commands/control.py); nixos-rebuild boot/test
# and anything else stay out of reach of the agent.
ACTIONS: tuple[str, ...] = (Action.SWITCH, Action.ROLLBACK, Action.REBOOT)
BUILD_ACTIONS: tuple[str, ...] = (Action.SWITCH,)
FIELDS = ("id", "action", "commit", "flake_attr", "refresh", "update_lock", "force")
MAX_REQUEST_BYTES = 4096
REJECTED_EXIT = 2

_COMMIT = re.compile(r"[0-9a-f]{40}")


class RequestError(Exception):
    """A refused request: ``field`` names the culprit, ``request_id`` is set when usable."""

    def __init__(self, field: str, message: str, request_id: str | None = None, action: str = "") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.request_id = request_id
        self.action = action


@dataclass(frozen=True)
class Request:
    id: str
    action: str
    commit: str
    flake_attr: str
    refresh: bool = False
    update_lock: bool = False  # force-update: root refreshes the agent's input in the lock itself
    force: bool = False  # switch a commit on the health bad list anyway (health/badlist.py)
    owner: int = 0  # uid that wrote the request: its results are given to that uid, nobody else

    def by(self, owner: int) -> Request:
        return replace(self, owner=owner)


def _open_dir_nofollow(path: Path) -> int:
    """Open a directory walking from ``/`` with O_NOFOLLOW at every step.

    A symlinked component (e.g. the agent replacing ``privileged/`` with a link to ``/etc``)
    fails with ELOOP/ENOTDIR instead of redirecting root's reads and unlinks.
    """
    if not path.is_absolute():
        raise ValueError(f"{path} is not an absolute path")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        for part in path.parts[1:]:
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        raise
    return fd


def read_request(path: Path, limit: int = MAX_REQUEST_BYTES) -> tuple[bytes, int] | None:
    """The request's bytes and the uid that wrote it, removed from its path; None when absent.

    Anything at the path is gone from it afterwards, even when refused, so the path unit does not
    fire again for it: files and links are unlinked, a directory is renamed aside (``_clear``), a
    ``privileged/`` that is a link is unlinked (``_unlink_link``).
    """
    try:
        dir_fd = _open_dir_nofollow(path.parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        removed = _unlink_link(path.parent)
        raise RequestError("request", f"directory {path.parent} is not a plain directory ({exc.strerror})"
                           + ("; removed the link" if removed else "")) from None
    try:
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _clear(path.name, dir_fd)
            if exc.errno == errno.ELOOP:
                raise RequestError("request", f"{path} is a symlink; refusing to follow it") from None
            raise RequestError("request", f"cannot open {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            owner = os.fstat(dir_fd).st_uid
            moved = _clear(path.name, dir_fd)
            if stat.S_ISDIR(info.st_mode):
                raise RequestError("request", f"{path} is a directory, not a file"
                                   + (f"; moved it aside to {moved}" if moved else ""))
            if not stat.S_ISREG(info.st_mode):
                raise RequestError("request", f"{path} is not a regular file")
            # a hard link or someone else's file is not a request the agent wrote
            if info.st_nlink != 1 or info.st_uid != owner:
                raise RequestError("request", f"{path} is not a file of the directory's owner with a single link")
            if info.st_size > limit:
                raise RequestError("request", f"{path} is larger than {limit} bytes ({info.st_size})")
            data = os.read(fd, limit + 1)
            if len(data) > limit:
                raise RequestError("request", f"{path} is larger than {limit} bytes")
            return data, owner
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _clear(name: str, dir_fd: int) -> str:
    """Take ``name`` out of the watched path; return where it went ("" when unlinked or gone).

    A directory cannot be unlinked and must not be walked (root descending into a tree the agent
    controls), so it is renamed aside within the same directory (``renameat`` never follows a
    link); what it holds stays the agent's to delete.
    """
    try:
        os.unlink(name, dir_fd=dir_fd)
        return ""
    except FileNotFoundError:
        return ""
    except OSError:
        pass
    aside = f".{name}.refused-{time.time_ns()}"
    try:
        os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        return ""
    return aside


def _unlink_link(path: Path) -> bool:
    """Remove ``path`` if it is a symlink (the agent replaced ``privileged/`` with one): the path
    unit follows it, so leaving it would start us again and again. Nothing else is touched."""
    try:
        parent = _open_dir_nofollow(path.parent)
    except OSError:
        return False
    try:
        if not stat.S_ISLNK(os.stat(path.name, dir_fd=parent, follow_symlinks=False).st_mode):
            return False
        os.unlink(path.name, dir_fd=parent)  # unlinkat removes the link itself, never its target
        return True
    except OSError:
        return False
    finally:
        os.close(parent)


def parse_request(data: bytes) -> Request:
    """Validate every field; raise RequestError naming the first bad one."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError("request", f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RequestError("request", f"must be a JSON object, got {type(doc).__name__}")

    raw_id = doc.get("id")
    if not isinstance(raw_id, str) or not valid_id(raw_id):
        raise RequestError("id", f"must match [A-Za-z0-9._-]{{1,64}} and not start with '.' (got {_show(raw_id)})")
    request_id = raw_id

    action = doc.get("action")
    shown_action = action if isinstance(action, str) and action in ACTIONS else ""
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise RequestError(unknown[0], "unknown field", request_id, shown_action)
    if action not in ACTIONS:
        raise RequestError("action", f"not allowed (got {_show(action)}; allowed: {', '.join(ACTIONS)})", request_id)

    commit = doc.get("commit", "")
    attr = doc.get("flake_attr", "")
    needs_build = action in BUILD_ACTIONS
    if not isinstance(commit, str) or ((needs_build or commit) and not _COMMIT.fullmatch(commit)):
        raise RequestError("commit", f"must be a full 40-hex lowercase commit id (got {_show(commit)})",
                           request_id, action)
    if not isinstance(attr, str) or ((needs_build or attr) and not HOSTNAME_RE.fullmatch(attr)):
        raise RequestError("flake_attr", f"must be {HOSTNAME_RULE} (got {_show(attr)})", request_id, action)
    flags = {}
    for name in ("refresh", "update_lock", "force"):
        value = doc.get(name, False)
        if not isinstance(value, bool):
            raise RequestError(name, f"must be true or false (got {_show(value)})", request_id, action)
        flags[name] = value
    for name in ("update_lock", "force"):
        if flags[name] and not needs_build:
            raise RequestError(name, f"only for {', '.join(BUILD_ACTIONS)} (got action {action})",
                               request_id, action)
    return Request(id=request_id, action=action, commit=commit, flake_attr=attr, **flags)


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:80] + "..."

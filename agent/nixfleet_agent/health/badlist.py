"""Commits that failed their health checks on this host, remembered so they are not applied again.

Why: with ``on_failure = "rollback"`` a commit that breaks the host would otherwise be built,
activated and rolled back again at every pull-switch until someone pushes a fix. A remembered
commit is refused with a clear error until a newer commit arrives (any other commit is not on the
list) or the request says ``force`` (``force-rebuild``/``force-update``); a forced switch that
passes its checks takes the commit off the list.

The file is private (0600 in a 0700 directory; root's own state on NixOS), read with
``O_NOFOLLOW``, bounded, and validated on read: a damaged file counts as empty and is reported
(``problem``), never a traceback; a refused switch is worse than a forgotten bad commit only when
the file is damaged, and then the operator is told.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_BYTES = 64 * 1024
KEEP = 20
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class BadCommit:
    commit: str
    at: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"commit": self.commit, "at": self.at, "reason": self.reason}


def validate(doc: object) -> list[BadCommit]:
    """Entries of a parsed document; ValueError naming what is wrong."""
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("commits"), list):
        raise ValueError('not {"version": 1, "commits": [...]}')
    out = []
    for entry in doc["commits"]:
        if (not isinstance(entry, dict) or not isinstance(entry.get("commit"), str)
                or not _COMMIT.fullmatch(entry["commit"]) or not isinstance(entry.get("at"), str)
                or not isinstance(entry.get("reason"), str)):
            raise ValueError(f"bad entry {json.dumps(entry)[:120]}")
        out.append(BadCommit(entry["commit"], entry["at"][:40], entry["reason"][:500]))
    return out[-KEEP:]


class BadList:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem = ""

    def load(self) -> list[BadCommit]:
        self.problem = ""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        except OSError as exc:
            self.problem = f"cannot read {self.path}: {exc.strerror or exc}"
            return []
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
                self.problem = f"{self.path} is not a private regular file of this user; ignored"
                return []
            data = os.read(fd, MAX_BYTES + 1)
        finally:
            os.close(fd)
        try:
            if len(data) > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            return validate(json.loads(data.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as exc:
            self.problem = f"{self.path} is damaged ({exc}); treated as empty"
            return []

    def find(self, commit: str) -> BadCommit | None:
        return next((e for e in self.load() if e.commit == commit), None)

    def add(self, commit: str, at: str, reason: str) -> list[BadCommit]:
        entries = [e for e in self.load() if e.commit != commit] + [BadCommit(commit, at, reason[:500])]
        self._save(entries[-KEEP:])
        return entries[-KEEP:]

    def remove(self, commit: str) -> list[BadCommit]:
        entries = self.load()
        kept = [e for e in entries if e.commit != commit]
        if len(kept) != len(entries):
            self._save(kept)
        return kept

    def replace(self, entries: list[BadCommit]) -> None:
        """Mirror another list (the agent keeps root's, from the result it was given)."""
        if entries != self.load():
            self._save(entries[-KEEP:])

    def _save(self, entries: list[BadCommit]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"version": 1, "commits": [e.as_dict() for e in entries]}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def refusal_text(entry: BadCommit) -> str:
    return (f"commit {entry.commit} failed its health checks on this host at {entry.at} ({entry.reason}) "
            "and was rolled back; push a newer commit, or switch with force (force-rebuild) to try it again")


def agent_list(state_dir: Path) -> BadList:
    """The agent's copy: its own list (Home Manager) or root's, mirrored from each result (NixOS)."""
    return BadList(Path(state_dir) / "health" / "bad-commits.json")

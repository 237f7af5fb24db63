"""Results that must outlive the agent: one private file per undelivered status in the state dir.

A final ``status`` (a command's or a detached switch's result) is written here before it is queued
and removed only when the dashboard has given evidence of having read it (see ``outbox``). An agent
that is SIGKILLed, crashes or is restarted finds the files and sends them again after its first
``registered``, so a result is delivered at least once whatever happened to the process. Files are
0600 in a 0700 directory and written atomically (``privatefs``); their text is already redacted,
because every frame is redacted before it reaches the Outbox.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import log
from ..privatefs import ensure_private_dir, write_private

DIR_NAME = "undelivered"
_log = log.get("journal")


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DIR_NAME

    def add(self, seq: int, kind: str, text: str, command: str) -> None:
        """Durably record one message (fsync'd: a result must survive a power cut, too)."""
        body = json.dumps({"seq": seq, "kind": kind, "command": command, "text": text})
        try:
            write_private(self.path / f"{seq:016d}.json", body, durable=True)
        except OSError as exc:
            _log.warn("journal_write_failed", path=str(self.path), error=exc.strerror or str(exc))

    def remove(self, seq: int) -> None:
        try:
            os.unlink(self.path / f"{seq:016d}.json")
        except FileNotFoundError:
            pass
        except OSError as exc:
            _log.warn("journal_remove_failed", path=str(self.path), error=exc.strerror or str(exc))

    def load(self) -> list[tuple[int, str, str, str]]:
        """(seq, kind, text, command) of every recorded message, oldest first; unreadable files are
        named in the log and skipped (never fatal: the agent must still come up)."""
        try:
            ensure_private_dir(self.path)
            names = sorted(p for p in self.path.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
        except OSError as exc:
            _log.warn("journal_unreadable", path=str(self.path), error=exc.strerror or str(exc))
            return []
        entries = []
        for path in names:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                entries.append((int(data["seq"]), str(data["kind"]), str(data["text"]), str(data.get("command", ""))))
            except (OSError, ValueError, KeyError, TypeError):
                _log.warn("journal_entry_ignored", path=str(path), reason="unreadable or malformed")
        return sorted(entries)

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
import re
from pathlib import Path

from .. import log
from ..privatefs import ensure_private_dir, quarantine, write_private

DIR_NAME = "undelivered"
_NAME = re.compile(r"(\d{16})\.json")
MAX_ENTRY = 1 << 20  # a status text is at most a few KiB; a bigger file is not ours
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
        """(seq, kind, text, command) of every recorded message, oldest first.

        The sequence number is the file's name (so ``remove`` always finds the file again); a file
        whose content disagrees, or that cannot be read or parsed, is quarantined once (never fatal:
        the agent must still come up, and must not replay a broken entry on every start)."""
        try:
            ensure_private_dir(self.path)
            names = sorted(p for p in self.path.iterdir() if _NAME.fullmatch(p.name))
        except OSError as exc:
            _log.warn("journal_unreadable", path=str(self.path), error=exc.strerror or str(exc))
            return []
        entries = []
        for path in names:
            seq = int(path.name[:16])
            try:
                with open(path, "rb") as fh:
                    data = json.loads(fh.read(MAX_ENTRY + 1).decode("utf-8"))
                if not isinstance(data, dict) or data.get("seq") != seq or isinstance(data.get("seq"), bool):
                    raise ValueError(f"content does not belong to sequence number {seq}")
                kind, text, command = data["kind"], data["text"], data.get("command", "")
                if not all(isinstance(v, str) for v in (kind, text, command)):
                    raise ValueError("kind, text and command must be strings")
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                quarantine(path, f"{type(exc).__name__}: {str(exc)[:160]}", "undelivered_entry")
                continue
            entries.append((seq, kind, text, command))
        return entries

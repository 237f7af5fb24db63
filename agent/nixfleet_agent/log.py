"""One event per line, ``key=value`` on stderr, so journald/launchd logs stay greppable.

Values containing spaces, quotes, ``=`` or control characters are double-quoted with escapes so a
line always parses back unambiguously; ``Secret`` values render as ``***`` and credentials in URLs
are redacted (``redact``).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from .redact import redact
from .secret import Secret

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
_state = {"level": LEVELS["info"], "timestamps": True}
_lock = threading.RLock()  # re-entrant: a signal handler may log while the main thread is logging
_MAX_VALUE = 2000


def setup(level: str) -> None:
    """Set the global threshold; timestamps are left to journald when it is the reader."""
    _state["level"] = LEVELS.get(level, LEVELS["info"])
    _state["timestamps"] = not os.environ.get("JOURNAL_STREAM")


def _quote(value: object) -> str:
    if isinstance(value, Secret):
        return "***"
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = redact(str(value))  # a URL's credentials never reach the journal
    if len(text) > _MAX_VALUE:
        text = text[:_MAX_VALUE] + f"...[{len(text) - _MAX_VALUE} more chars]"
    if text and all(c.isprintable() and c not in ' "=\\' for c in text):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    escaped = "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in escaped)
    return f'"{escaped}"'


def format_line(level: str, component: str, event: str, fields: dict[str, object]) -> str:
    parts = [f"level={level}", f"component={_quote(component)}", f"event={_quote(event)}"]
    parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
    if _state["timestamps"]:
        parts.append("ts=" + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return " ".join(parts)


class Logger:
    __slots__ = ("component",)

    def __init__(self, component: str) -> None:
        self.component = component

    def _emit(self, level: str, event: str, fields: dict[str, object]) -> None:
        if LEVELS[level] < _state["level"]:
            return
        line = format_line(level, self.component, event, fields) + "\n"
        with _lock:
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # stderr gone (closed pipe): logging must never take the agent down

    def debug(self, event: str, **fields: object) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._emit("info", event, fields)

    def warn(self, event: str, **fields: object) -> None:
        self._emit("warn", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._emit("error", event, fields)


def end_terminal_echo() -> None:
    """Start the next log line on a fresh line when stderr is a terminal.

    A terminal echoes Ctrl-C as ``^C`` where the cursor is, before the agent sees SIGINT; without a
    newline the next event would read ``^Clevel=info ...`` and no longer parse as key=value.
    Nothing is written to a pipe or the journal.
    """
    with _lock:
        try:
            if sys.stderr.isatty():
                sys.stderr.write("\n")
                sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass


def get(component: str) -> Logger:
    return Logger(component)

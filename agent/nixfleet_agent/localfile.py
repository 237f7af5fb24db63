"""Reading a small local file the agent is configured with (TOML config, token file), safely.

Why: these paths come from an operator or a module; one of them may point at a FIFO (an open
that blocks for ever), a device (``/dev/zero``: an unbounded read), a huge file, or bytes that are
not UTF-8. Each of those must become one line naming the file, never a hang or a traceback. So
the file is opened ``O_NONBLOCK`` (a FIFO without a writer opens at once), must be a regular file
(``fstat``), is read up to a bound, and is decoded strictly.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable


class LocalFileError(ValueError):
    """What is wrong with the file, as one line: ``cannot read '<path>': <reason>``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read '{path}': {reason}")
        self.path, self.reason = path, reason


def read_text(path: str, limit: int, check: Callable[[os.stat_result], str | None] | None = None) -> str:
    """The file's UTF-8 text, at most ``limit`` bytes; LocalFileError otherwise.

    ``check`` sees the ``fstat`` of the opened descriptor (so what is checked is what is read, no
    stat-then-open race) and returns the reason to refuse it, e.g. root's "owned by root" rule."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise LocalFileError(path, str(exc.strerror or exc)) from None
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                raise LocalFileError(path, "Is a directory")
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special"
            raise LocalFileError(path, f"it is {kind}, not a regular file")
        refused = check(info) if check is not None else None
        if refused:
            raise LocalFileError(path, refused)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise LocalFileError(path, f"larger than {limit} bytes")
    except OSError as exc:
        raise LocalFileError(path, str(exc.strerror or exc)) from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LocalFileError(path, f"not UTF-8 text (byte {exc.start})") from None

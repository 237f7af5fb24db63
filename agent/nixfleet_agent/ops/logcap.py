"""The one size rule for an operation's log file (setting ``op_log_max_mb``).

Why a module of its own, with no imports from the package: two writers fill operation logs, the
agent's :class:`~nixfleet_agent.ops.oplog.OpLog` (attached commands) and the switch wrapper
(``ops/switchwrapper.py``, a detached or transient switch that outlives the agent). The wrapper
runs as a script next to this file and imports it as a top-level module, so both cut a log at the
same byte with the same visible marker: one rule, not two.

The rule: what fits under the limit is written; the first write that does not fit is cut after its
last whole line that still fits, the marker line follows (it is not counted), and nothing more is
written. Counting starts at the file's size when it is opened (:func:`opened`: a switch log
already holds the agent's header lines, and the agent appends its final lines after the switch);
a log that already ends with the marker stays cut, so there is one marker, never two.
"""

from __future__ import annotations

STREAMED = "only streamed to the dashboard"  # attached: the agent still streams every line
DROPPED = "dropped (the command kept running)"  # detached: the dashboard reads this very file


PREFIX = "[nixfleet-agent: log truncated at "


def marker(limit: int, rest: str) -> str:
    return f"{PREFIX}{limit} bytes; further output was {rest}]\n"


class Cap:
    """Bytes a log may still take; ``take`` says what of a write goes to the file."""

    def __init__(self, limit: int, used: int = 0, rest: str = STREAMED) -> None:
        self.limit = limit
        self.used = used
        self.rest = rest
        self.full = False

    def take(self, data: bytes) -> tuple[bytes, str | None]:
        """(bytes to write, marker line to write after them or None). Once the limit was reached
        every later call returns ``(b"", None)``: the caller keeps reading its source (a child
        blocked on a full pipe would hang) and drops what it read."""
        if self.full:
            return b"", None
        room = self.limit - self.used
        if len(data) <= room:
            self.used += len(data)
            return data, None
        self.full = True
        cut = data.rfind(b"\n", 0, max(room, 0))
        kept = data[: cut + 1] if cut >= 0 else b""
        self.used += len(kept)
        return kept, marker(self.limit, self.rest)


def opened(path: str, limit: int, rest: str = STREAMED) -> Cap:
    """The cap of a log file as it is now (see the module doc)."""
    cap = Cap(limit, 0, rest)
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - 512))
            tail = fh.read()
    except OSError:
        return cap
    cap.used = size
    cap.full = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(PREFIX.encode())
    return cap

"""The benchmark's chatty child: N numbered lines of exactly 80 characters, as fast as it can.

Line i is ``f"{i:08d} "`` followed by a fixed filler up to 80 characters, so the receiver can check
order and completeness from the line text alone. Written in 64 KiB chunks so the child itself is
never the bottleneck (about 100x faster than the agent needs to go).
"""

from __future__ import annotations

import os
import sys

WIDTH = 80
FILLER = ("nixfleet-bench-" * 8)[: WIDTH - 9]


def line(i: int) -> str:
    return f"{i:08d} {FILLER}"


def main() -> int:
    n = int(sys.argv[1])
    out = sys.stdout.fileno()
    batch: list[str] = []
    for i in range(n):
        batch.append(line(i))
        if len(batch) == 800:
            _write_all(out, ("\n".join(batch) + "\n").encode())
            batch = []
    if batch:
        _write_all(out, ("\n".join(batch) + "\n").encode())
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if __name__ == "__main__":
    sys.exit(main())

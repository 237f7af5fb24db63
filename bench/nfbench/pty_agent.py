"""Bench-only launcher: the real agent, with every child command put on a pseudo-terminal.

The runner chooses pipes unless a command asks for ``mode="pty"`` and offers no switch to force it,
so to measure both modes with the same commands this launcher wraps ``runner.run`` before the agent
starts. Nothing else changes. Used only by bench/ (see bench/README.md).
"""

from __future__ import annotations

import sys
from typing import Any

from nixfleet_agent import cli
from nixfleet_agent.ops import runner

_original = runner.run


def _run_on_pty(*args: Any, **kwargs: Any) -> runner.Result:
    kwargs["mode"] = "pty"
    return _original(*args, **kwargs)


runner.run = _run_on_pty  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))

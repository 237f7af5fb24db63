"""Version and source commit, the two facts `--version` and the dashboard's freshness check rely on.

The version has one source of truth, the ``VERSION`` file next to this module (pyproject.toml and the
Nix package both read it). The source commit is written into ``SOURCE_COMMIT`` by the Nix build from
the flake's ``self.rev``; a plain checkout or wheel without it reports ``unknown``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _read(name: str, default: str) -> str:
    try:
        value = (_HERE / name).read_text(encoding="utf-8").strip()
    except OSError:
        return default
    return value or default


@cache
def version() -> str:
    return _read("VERSION", "dev")


@cache
def source_commit() -> str:
    return _read("SOURCE_COMMIT", "unknown")

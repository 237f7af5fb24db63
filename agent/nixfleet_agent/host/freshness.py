"""What exactly is running: build commit, installed package path and a hash of the agent's own code.

For a Python agent ``/proc/self/exe`` is the interpreter, which does not change when the agent does,
so the dashboard's freshness check would call every switch stale. We report the package's store path
(the ``/nix/store/<hash>-name`` root when installed by Nix) and a sha256 over the installed sources.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # the nixfleet_agent package, not host/


def package_dir() -> Path:
    """The directory the running ``nixfleet_agent`` package was imported from."""
    return _PACKAGE


@cache
def store_path() -> str:
    parts = _PACKAGE.parts
    if len(parts) > 3 and parts[1] == "nix" and parts[2] == "store":
        return str(Path(*parts[:4]))
    return str(_PACKAGE)


@cache
def code_hash() -> str:
    """The hash of the code as it was when the agent started (what runs)."""
    return tree_hash()


def tree_hash() -> str:
    """sha256 over (relative path, bytes) of every .py file and the build facts, in sorted order,
    read now: compared with :func:`code_hash` it tells whether the package on disk changed."""
    digest = hashlib.sha256()
    files = sorted(p for p in _PACKAGE.rglob("*") if p.is_file() and (p.suffix == ".py" or p.name in ("VERSION", "SOURCE_COMMIT")))
    for path in files:
        rel = path.relative_to(_PACKAGE).as_posix().encode()
        try:
            data = path.read_bytes()
        except OSError:
            continue
        digest.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()

"""Helpers shared by the command tests, in a module of its own name: several test directories have a
``conftest.py``, and ``from conftest import ...`` would pick whichever was imported first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHIMS = Path(__file__).resolve().parent.parent / "shims"


def kinds(records: list[Any]) -> list[str]:
    """Message types in order, consecutive outputs and heartbeats collapsed (they interleave freely)."""
    out: list[str] = []
    for r in records:
        if r.type == "heartbeat":
            continue
        if r.type == "operation_progress":
            phase, value = next(iter(r.payload["progress"].items()))
            label = f"progress:{phase}:{value['status']}"
        elif r.type == "test_progress":
            label = "test_progress"
        else:
            label = r.type
        if label == "output" and out and out[-1] == "output":
            continue
        out.append(label)
    return out


def add_tests(repo: Path, scripts: dict[str, str], host: str = "test-host", mode: int = 0o755) -> None:
    """Commit test scripts into the fleet repo (``hosts/<host>/tests``) before the agent clones it."""
    from support import git

    directory = repo / "hosts" / host / "tests"
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        path = directory / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(mode)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tests")


def take_request(request: Path, timeout: float = 10) -> dict[str, Any]:
    """What a stand-in for the privileged root unit does first: wait for the agent's
    ``request.json``, read it and remove it (the real root side removes it before acting too)."""
    from support import wait_for

    wait_for(request.exists, timeout, "request.json")
    data: dict[str, Any] = json.loads(request.read_text())
    request.unlink()
    return data

"""Update-status compartments (git/lock/system/tests) and the agent's last results, kept on disk.

Upstream kept these in memory, so every restart blanked the Tests compartment and a switch that
outlived the agent could never be resolved. Here they persist in ``<state_dir>/state.json`` (atomic
write, mode 0600) and ``nixfleet-agent status`` can show them without a running agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from . import gitenv, log
from .privatefs import write_private
from .redact import redact
from .link.protocol import COMPARTMENTS

LOCK_REFRESH_EVERY = 300.0
STATE_FILE = "state.json"
_log = log.get("status")


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _empty() -> dict[str, str]:
    return {"status": "", "message": "", "checked_at": ""}


def read_state(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class StatusStore:
    def __init__(self, state_dir: Path, git_timeout: int = 10) -> None:
        self._path = state_dir / STATE_FILE
        self._lock = threading.Lock()
        self._git_timeout = min(git_timeout, 10)
        self._lock_checked = 0.0
        self._lock_cache: dict[str, object] = {}  # flake.lock's commit time, keyed by repo state
        data = read_state(state_dir)
        stored: dict[str, Any] = data["compartments"] if isinstance(data.get("compartments"), dict) else {}
        self._compartments: dict[str, dict[str, str]] = {}
        for name in COMPARTMENTS:
            value = stored.get(name) if isinstance(stored.get(name), dict) else None
            entry = _empty()
            if value:
                entry.update({k: str(value.get(k, "")) for k in entry})
            self._compartments[name] = entry
        for name, entry in self._compartments.items():
            if entry["status"] == "working":  # a previous process died mid-command; resume() may re-set it
                entry.update(status="unknown", message="Status stale (agent restarted during command)",
                             checked_at=now_rfc3339())
        self._last_command: dict[str, Any] | None = (
            data["last_command"] if isinstance(data.get("last_command"), dict) else None
        )
        self._extras: dict[str, Any] = data["extras"] if isinstance(data.get("extras"), dict) else {}

    def set(self, compartment: str, status: str, message: str) -> None:
        if compartment not in COMPARTMENTS:
            raise ValueError(f"unknown compartment {compartment!r}")
        with self._lock:
            self._compartments[compartment] = {"status": status, "message": message, "checked_at": now_rfc3339()}
            self._save_locked()

    def get(self, compartment: str) -> dict[str, str]:
        with self._lock:
            return dict(self._compartments[compartment])

    def compartments(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {name: dict(value) for name, value in self._compartments.items()}

    def record_command(self, command: str, status: str, exit_code: int, message: str) -> None:
        with self._lock:
            self._last_command = {"command": command, "status": status, "exit_code": exit_code,
                                  "message": message, "finished_at": now_rfc3339()}
            self._save_locked()

    def note(self, key: str, value: object) -> None:
        with self._lock:
            self._extras[key] = value
            self._save_locked()

    def refresh_lock(self, repo_dir: Path, force: bool = False) -> dict[str, str]:
        """Upstream's age rule: ok up to 7 days since flake.lock last changed, outdated after."""
        now = time.monotonic()
        if not force and self._lock_checked and now - self._lock_checked < LOCK_REFRESH_EVERY:
            return self.get("lock")
        self._lock_checked = now
        status, message = lock_age_status(repo_dir, self._git_timeout, None if force else self._lock_cache)
        self.set("lock", status, message)
        return self.get("lock")

    def _save_locked(self) -> None:
        data = {"compartments": self._compartments, "last_command": self._last_command, "extras": self._extras}
        try:
            write_private(self._path, redact(json.dumps(data, indent=2, sort_keys=True)))  # a boundary, too
        except OSError as exc:
            _log.warn("state_write_failed", path=str(self._path), error=exc.strerror or str(exc))


def lock_age_status(repo_dir: Path, timeout: int = 10, cache: dict[str, object] | None = None) -> tuple[str, str]:
    """``cache`` (kept by the caller) remembers flake.lock's commit time per repository state, so
    the age is recomputed from the clock without a ``git`` child while nothing changed."""
    if not str(repo_dir):
        return "unknown", "Repository path not configured"
    if not (repo_dir / "flake.lock").is_file():
        return "unknown", "flake.lock not found"
    fingerprint = gitenv.state_fingerprint(repo_dir, repo_dir / "flake.lock")
    if cache is not None and fingerprint is not None and cache.get("fingerprint") == fingerprint:
        return _lock_age(int(str(cache["when"])))
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
    try:
        # %ct (epoch seconds) rather than upstream's %ci: integer arithmetic needs no datetime/_strptime
        # (with calendar and locale) in the long-running agent. Same day count.
        out = subprocess.run(
            ["git", "-c", f"safe.directory={repo_dir}", "-C", str(repo_dir), "log", "-1", "--format=%ct", "--", "flake.lock"],
            capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return "error", f"Failed to check flake.lock: {exc}"
    if out.returncode != 0:
        return "error", f"Failed to check flake.lock: {(out.stderr.strip().splitlines() or ['git failed'])[0]}"
    stamp = out.stdout.strip()
    if not stamp:
        return "unknown", "flake.lock has no git history"
    try:
        when = int(stamp)
    except ValueError:
        return "error", f"Failed to check flake.lock: unparsable date {stamp!r}"
    if cache is not None and fingerprint is not None:
        cache.update(fingerprint=fingerprint, when=when)
    return _lock_age(when)


def _lock_age(when: int) -> tuple[str, str]:
    days = max(int(time.time() - when) // 86400, 0)
    text = "Updated today" if days == 0 else "Updated yesterday" if days == 1 else f"Updated {days} days ago"
    if days <= 7:
        return "ok", text
    if days <= 30:
        return "outdated", f"{text} - consider updating"
    return "outdated", f"{text} - needs update"

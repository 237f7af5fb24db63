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

from ..repo import gitenv
from .. import log
from ..localfile import LocalFileError, read_text
from ..privatefs import write_private
from ..redact import redact
from ..link.protocol import COMPARTMENTS

LOCK_REFRESH_EVERY = 300.0
STATE_FILE = "state.json"
_log = log.get("status")


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _empty() -> dict[str, str]:
    return {"status": "", "message": "", "checked_at": ""}


STATE_MAX_BYTES = 1 << 20  # the agent writes a few KiB; anything larger is not its state file


def read_state(state_dir: Path) -> dict[str, Any]:
    """The decoded state file, {} when absent, unreadable, oversized or not a JSON object."""
    try:  # the one bounded, non-blocking reader: a FIFO or device named state.json must not hang `status`
        data = json.loads(read_text(str(state_dir / STATE_FILE), STATE_MAX_BYTES))
    except (LocalFileError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def snapshot(state_dir: Path) -> dict[str, Any]:
    """What ``nixfleet-agent status`` shows, with every field of the declared type.

    Why: the state file may be type-corrupted (an old agent, a hand edit, a disk fault) and the
    state directory may be unreadable to the caller; the status command is what an operator runs
    exactly then, so it shows what it can and never raises.
    """
    data = read_state(state_dir)
    found = data.get("compartments")
    raw_comp: dict[str, Any] = found if isinstance(found, dict) else {}
    compartments: dict[str, dict[str, str]] = {}
    for name in COMPARTMENTS:
        value = raw_comp.get(name)
        entry: dict[str, Any] = value if isinstance(value, dict) else {}
        compartments[name] = {k: _text(entry.get(k)) for k in ("status", "message", "checked_at")}
    last = data.get("last_command")
    last_command: dict[str, Any] | None = None
    if isinstance(last, dict):
        last_command = {k: _text(last.get(k)) for k in ("command", "status", "message", "finished_at")}
        code = last.get("exit_code")
        last_command["exit_code"] = code if isinstance(code, int) and not isinstance(code, bool) else None
    extras = data.get("extras") if isinstance(data.get("extras"), dict) else {}
    out: dict[str, Any] = {"state_dir": str(state_dir), "compartments": compartments,
                           "last_command": last_command, "extras": extras, "problems": []}
    logs: list[Path] = []
    try:
        logs = sorted(p for p in (state_dir / "logs").iterdir() if p.suffix == ".log")
    except FileNotFoundError:
        pass
    except OSError as exc:
        out["problems"].append(f"cannot list {state_dir / 'logs'}: {exc.strerror or exc}")
    out["logs"] = [str(p) for p in logs[-20:]]
    try:
        out["alive_age_seconds"] = round(time.time() - (state_dir / "alive").stat().st_mtime, 1)
    except FileNotFoundError:
        out["alive_age_seconds"] = None
    except OSError as exc:
        out["alive_age_seconds"] = None
        out["problems"].append(f"cannot read {state_dir / 'alive'}: {exc.strerror or exc}")
    if not os.access(state_dir, os.R_OK | os.X_OK) and state_dir.exists():
        out["problems"].append(f"state dir {state_dir} is not readable by this user")
    from ..ops.journal import quarantined  # status stays importable without the ops package loaded

    out["quarantined_records"] = [str(p) for p in quarantined(state_dir)]
    return out


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

    def extra(self, key: str) -> Any:
        with self._lock:
            return self._extras.get(key)

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

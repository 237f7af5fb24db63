"""The facts the dashboard shows for a host: ``register`` once per connection, ``heartbeat`` on a cadence.

Generation comes from ``git rev-parse`` (works with packed refs, worktrees, reftable) and the lock hash
is recomputed every time, because the dashboard compares both with the fleet repo's remote state.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .. import buildinfo
from . import freshness
from ..config import Config
from ..link import protocol
from .metrics import Metrics
from .status import StatusStore
from ..health.agentside import heartbeat_fields as health_fields


class RepoFacts(Protocol):
    def generation(self) -> str: ...
    def lock_hash(self) -> str: ...


class LocalRepoFacts:
    """Fallback when ``repo.clone.Repo`` is unavailable: the same two facts, read directly."""

    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = repo_dir

    def generation(self) -> str:
        if not (self.repo_dir / ".git").exists():
            return ""
        try:
            out = subprocess.run(
                ["git", "-c", f"safe.directory={self.repo_dir}", "-C", str(self.repo_dir), "rev-parse", "HEAD"],
                capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL, check=False,
                env=dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0"),
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        head = out.stdout.strip()
        return head[:7] if out.returncode == 0 and len(head) >= 7 else ""

    def lock_hash(self) -> str:
        try:
            return hashlib.sha256((self.repo_dir / "flake.lock").read_bytes()).hexdigest()
        except OSError:
            return ""


def os_version() -> str:
    if platform.system() == "Darwin":
        try:
            text = Path("/System/Library/CoreServices/SystemVersion.plist").read_text()
            after = text.split("<key>ProductVersion</key>", 1)[1]
            return after.split("<string>", 1)[1].split("</string>", 1)[0].strip()
        except (OSError, IndexError):
            return "unknown"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_ID="):
                return line.split("=", 1)[1].strip().strip('"').strip("'")
    except OSError:
        pass
    return "unknown"


def nixpkgs_version(cfg: Config) -> str:
    if cfg.nixpkgs_version:
        return cfg.nixpkgs_version
    try:
        return Path("/run/current-system/nixos-version").read_text().strip()
    except OSError:
        return ""


class Heartbeat:
    def __init__(
        self,
        cfg: Config,
        repo: RepoFacts,
        status: StatusStore,
        pending: Callable[[], tuple[str | None, int | None]],
        extra: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.repo = repo
        self.status = status
        self.pending = pending
        self.extra = extra  # issue 16: needs-reboot and drift fields (visibility.service)
        self.metrics = Metrics()
        self.os_version = os_version()
        self.nixpkgs_version = nixpkgs_version(cfg)

    def register_payload(self) -> dict[str, object]:
        return protocol.register(
            hostname=self.cfg.hostname,
            host_type=self.cfg.host_type,
            own_version=buildinfo.version(),
            os_version=self.os_version,
            nixpkgs_version=self.nixpkgs_version,
            generation=self.repo.generation(),
            theme_color=self.cfg.theme_color,
            heartbeat_interval=self.cfg.interval,
            location=self.cfg.location,
            device_type=self.cfg.device_type,
            repo_url=self.cfg.repo_url,
            repo_dir=str(self.cfg.repo_dir),
            source_commit=buildinfo.source_commit(),
            store_path=freshness.store_path(),
            binary_hash=freshness.code_hash(),
        )

    def heartbeat_payload(self) -> dict[str, object]:
        command, pid = self.pending()
        try:
            self.status.refresh_lock(self.cfg.repo_dir)
        except OSError:
            pass
        payload = health_fields(self.cfg.state_dir) | protocol.heartbeat(
            generation=self.repo.generation(),
            nixpkgs_version=self.nixpkgs_version,
            pending_command=command,
            command_pid=pid,
            metrics=self.metrics.sample(),
            update_status=self.status.compartments(),
            source_commit=buildinfo.source_commit(),
            store_path=freshness.store_path(),
            binary_hash=freshness.code_hash(),
            lock_hash=self.repo.lock_hash(),
        )
        if self.extra is not None:
            payload.update(self.extra())
        return payload

"""Where the *installed* agent is, and whether a switch changed it.

Why: after a successful switch the agent must restart itself only when its own package changed
(otherwise re-registering is enough for the dashboard). The running package is
``freshness.store_path()``; the installed one is what the service manager will start next, found
like upstream's ``check-version`` does (profile bins, then ``PATH``). On a Nix install both are
``/nix/store/<hash>-…`` roots and comparing them is exact. Elsewhere (dev installs, tests) we
compare a fingerprint (resolved paths + bytes hash of the installed entry point and of the service
definition) taken before the switch with one taken after. When nothing can be found at all we
restart, which is upstream's behaviour and merely costs a reconnect.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
from pathlib import Path

from .. import freshness

_UNIT_FILES = (
    "/etc/systemd/system/nixfleet-agent.service",
    "~/Library/LaunchAgents/com.nixfleet.agent.plist",
    "~/Library/LaunchAgents/org.nix-community.home.nixfleet-agent.plist",
)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (DynamicUser) raises KeyError or OSError
        return os.environ.get("USER", "")


def candidates(platform: str) -> list[Path]:
    """Upstream's search order: the Home Manager profile first on macOS, then the system ones."""
    home = Path(os.path.expanduser("~"))
    paths = [
        Path("/run/current-system/sw/bin/nixfleet-agent"),
        Path(f"/etc/profiles/per-user/{_user()}/bin/nixfleet-agent"),
    ]
    hm = home / ".nix-profile/bin/nixfleet-agent"
    if platform in ("darwin", "home-manager"):
        paths.insert(0, hm)
    else:
        paths.append(hm)
    return paths


def installed_agent(platform: str) -> Path | None:
    for path in candidates(platform):
        if path.exists():
            return path
    found = shutil.which("nixfleet-agent")
    return Path(found) if found else None


def store_root(path: Path) -> str:
    parts = Path(os.path.realpath(path)).parts
    if len(parts) > 3 and parts[1] == "nix" and parts[2] == "store":
        return str(Path(*parts[:4]))
    return ""


def _describe(path: Path) -> str:
    real = os.path.realpath(path)
    try:
        digest = hashlib.sha256(Path(real).read_bytes()).hexdigest()[:16]
    except OSError:
        digest = "-"
    return f"{path}={real}@{digest}"


def fingerprint(platform: str) -> str:
    """Resolved path + content hash of the installed entry point and service definition ("" if none)."""
    parts = []
    agent = installed_agent(platform)
    if agent is not None:
        parts.append(_describe(agent))
    for unit in _UNIT_FILES:
        path = Path(os.path.expanduser(unit))
        if path.exists():
            parts.append(_describe(path))
    return ";".join(parts)


def restart_needed(platform: str, before: str) -> tuple[bool, str]:
    """(restart?, why) after a successful switch; ``before`` is :func:`fingerprint` from its start."""
    agent = installed_agent(platform)
    running = freshness.store_path()
    if agent is not None:
        root = store_root(agent)
        if root and running.startswith("/nix/store/"):
            if root != running:
                return True, f"installed agent {root} differs from running {running}"
            return False, f"agent package unchanged ({running})"
    after = fingerprint(platform)
    if not before and not after:
        return True, "cannot locate the installed agent; restarting to be safe"
    if before != after:
        return True, "installed agent changed"
    return False, "agent package unchanged"

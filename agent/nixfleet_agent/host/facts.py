"""What the agent detects about its host when the configuration does not say: the host name
(the dashboard's host id and the flake attribute), the platform (which rebuild tool) and the
state directory. Kept apart from config parsing because these read the machine, not settings."""

from __future__ import annotations

import os
import platform as _platform
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path


def is_darwin() -> bool:
    return _platform.system() == "Darwin"


def detect_hostname() -> str:
    """scutil LocalHostName on macOS (stable across networks), else the short OS hostname."""
    if is_darwin():
        try:
            out = subprocess.run(
                ["scutil", "--get", "LocalHostName"], capture_output=True, text=True, timeout=5, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return socket.gethostname().split(".")[0]


def detect_platform() -> str:
    darwin = is_darwin()
    if not darwin and Path("/etc/NIXOS").exists():
        return "nixos"
    import shutil  # not at the top: it pulls in bz2/lzma, which an idle NixOS agent never needs

    if darwin:
        return "darwin" if shutil.which("darwin-rebuild") else "home-manager"
    return "nixos" if shutil.which("nixos-rebuild") else "home-manager"


def default_state_dir(env: Mapping[str, str]) -> str:
    if env.get("STATE_DIRECTORY"):
        return env["STATE_DIRECTORY"].split(":")[0]
    if not is_darwin() and hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/nixfleet-agent"
    home = env.get("HOME") or str(Path.home())
    return str(Path(home) / ".local/state/nixfleet-agent")

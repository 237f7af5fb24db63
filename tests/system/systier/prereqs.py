"""Can the system tier run here? One answer, used to skip locally and to fail loudly on CI."""

from __future__ import annotations

import os
import shutil

REQUIRED_TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "unshare", "mount")


def missing_reason() -> str | None:
    """Why this machine cannot run the tier, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn and mounts)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return "missing tools: " + ", ".join(missing) + " (apt-get install systemd-container debootstrap)"
    if not os.path.exists("/proc/self/ns/cgroup"):
        return "kernel lacks cgroup namespaces"
    return None


def on_ci() -> bool:
    """CI must never skip this tier silently: a missing prerequisite is a failure there."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")

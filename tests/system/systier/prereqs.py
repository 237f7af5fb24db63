"""Can the system tier run here? One answer, used to skip locally and to fail loudly on CI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
    if booted_in_nspawn():
        return ("running in a machine booted by systemd-nspawn (e.g. dev/fresh-debian --as-root): the tier "
                "would boot a nested one, which is not set up; run tests/system on the host")
    return None


def booted_in_nspawn() -> bool:
    """systemd inside an nspawn container writes its manager's name to /run/systemd/container.

    Only this case is refused: a plain (e.g. docker) container without systemd runs the tier fine."""
    try:
        return Path("/run/systemd/container").read_text().strip() == "systemd-nspawn"
    except OSError:
        return False


def on_ci() -> bool:
    """CI must never skip this tier silently: a missing prerequisite is a failure there."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")

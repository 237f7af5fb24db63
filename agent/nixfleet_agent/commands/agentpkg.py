"""Where the *installed* agent is, and whether a switch changed it.

Why: after a successful switch the agent must restart itself only when what the service manager
would start differs from what runs (otherwise re-registering is enough for the dashboard).

1. The service definition (NixOS unit, Home Manager launchd plist or user unit) names the agent's
   package and config file by store path; if one exists, a switch that changed its resolved path
   or content means "restart". This is exact on Nix installs and also catches config changes,
   which need a restart too (the NixOS unit has ``restartIfChanged = false``).
2. Without one, the installed ``nixfleet-agent`` (found like upstream's ``check-version``: profile
   bins, then ``PATH``, then what this process was started as) resolved to its ``/nix/store`` root
   is compared with the running package's ``freshness.store_path()``; outside the store, a
   fingerprint of that entry point taken before the switch is compared with one taken after (dev
   installs, tests).
3. When nothing can be found at all the agent restarts: upstream's behaviour, it costs a reconnect.

The last fallback of 2., the program this process was started as (``sys.argv[0]``: a console script
such as ``venv/bin/nixfleet-agent``, or ``nixfleet_agent/cli.py`` under ``python -m``), is what the
same command line starts again, so it answers "would a restart run something else?" where neither a
profile nor ``PATH`` names the agent (a virtualenv whose ``bin/`` is not on ``PATH``, a unit
outside the ones above). Without it such an agent exits after every switch and, unsupervised, never
comes back. It comes last so upstream's order still decides wherever it finds something.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import sys
from pathlib import Path

from ..host import freshness

_UNIT_FILES = (
    "/etc/systemd/system/nixfleet-agent.service",  # NixOS module (a symlink into the store)
    "/Library/LaunchDaemons/com.nixfleet.agent.plist",  # nix-darwin module (a copy, not a link)
    "~/Library/LaunchAgents/com.nixfleet.agent.plist",  # Home Manager module on macOS
    "~/.config/systemd/user/nixfleet-agent.service",  # Home Manager on Linux
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


def _started_as() -> Path | None:
    """``sys.argv[0]`` made absolute against the start directory (hence taken at import, before
    anything changes directory), or None for ``-c``, an interactive or an embedded interpreter."""
    argv0 = sys.argv[0] if sys.argv else ""
    if not argv0 or argv0 == "-c":
        return None
    path = Path(os.path.abspath(argv0))
    return path if path.is_file() else None


STARTED_AS = _started_as()


def installed_agent(platform: str) -> Path | None:
    for path in candidates(platform):
        if path.exists():
            return path
    found = shutil.which("nixfleet-agent")
    if found:
        return Path(found)
    return STARTED_AS if STARTED_AS is not None and STARTED_AS.exists() else None


def store_root(path: Path) -> str:
    parts = Path(os.path.realpath(path)).parts
    if len(parts) > 3 and parts[1] == "nix" and parts[2] == "store":
        return str(Path(*parts[:4]))
    return ""


def _describe(path: Path) -> str:
    real = os.path.realpath(path)
    if Path(real).is_relative_to(freshness.package_dir()):
        # started as ``python -m nixfleet_agent.cli``: what runs next is the whole package, not cli.py
        return f"{path}=package:{freshness.package_dir()}@{freshness.tree_hash()[:16]}"
    try:
        digest = hashlib.sha256(Path(real).read_bytes()).hexdigest()[:16]
    except OSError:
        digest = "-"
    return f"{path}={real}@{digest}"


def service_fingerprint() -> str:
    """Resolved path + content hash of the service definition the service manager starts next.

    It names the agent's package (ExecStart / ProgramArguments) and its config file, so it changes
    exactly when the agent must restart to run what the switch installed.
    """
    parts = []
    for unit in _UNIT_FILES:
        path = Path(os.path.expanduser(unit))
        if path.exists():
            parts.append(_describe(path))
    return ";".join(parts)


def fingerprint(platform: str) -> str:
    """What a switch is compared against: the service definition if there is one, else the
    installed entry point ("" when neither exists)."""
    service = service_fingerprint()
    if service:
        return "service:" + service
    agent = installed_agent(platform)
    return "agent:" + _describe(agent) if agent is not None else ""


_STARTED: dict[str, str] = {}


def remember_started(platform: str) -> str:
    """Take the fingerprint of what *this process* was started from (called once at agent start).

    Why (issue 13 item 3): comparing before/after one switch misses an agent updated out of band
    (an admin's ``nixos-rebuild``: every later switch sees "unchanged" and the old agent runs on)
    and makes an agent restarted mid-switch that already runs the new version exit again.
    """
    _STARTED[platform] = fingerprint(platform)
    return _STARTED[platform]


def restart_needed(platform: str, before: str) -> tuple[bool, str]:
    """(restart?, why) after a successful switch. Compared with the fingerprint this process was
    started from (:func:`remember_started`); ``before`` (taken when the switch started) only when
    that is unknown (ad-hoc callers)."""
    before = _STARTED.get(platform, before)
    after = fingerprint(platform)
    if before.startswith("service:") or after.startswith("service:"):
        if before != after:
            return True, "the agent's service definition changed"
        return False, "agent service definition unchanged"
    agent = installed_agent(platform)
    running = freshness.store_path()
    if agent is not None:
        root = store_root(agent)
        if root and running.startswith("/nix/store/"):
            if root != running:
                return True, f"installed agent {root} differs from running {running}"
            return False, f"agent package unchanged ({running})"
    if not before and not after:
        return True, "cannot locate the installed agent; restarting to be safe"
    if before != after:
        return True, "installed agent changed"
    return False, "agent package unchanged"

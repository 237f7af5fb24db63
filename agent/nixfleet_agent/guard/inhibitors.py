"""NixOS switch inhibitors: would ``switch-to-configuration switch`` refuse the new system?

nixpkgs (``nixos/modules/system/activation/switchable-system.nix``) writes
``system.switch.inhibitors``, an attribute set of strings, as JSON into every system's
``switch-inhibitors`` file; its pre-switch check refuses a ``switch`` (not a ``boot``) when a key
present in both ``/run/current-system/switch-inhibitors`` and the new system's file has another
value, and reads a missing file as ``{}``. The same rule here, run before the switch: on a
difference root runs ``nixos-rebuild boot`` instead, so a change such as the D-Bus implementation
does not fail every switch until someone reboots by hand (comin#155), and says so.

A file that is not a JSON object (an early development form listed store paths, one a line) is
compared as a whole: different bytes count as changed, the cautious reading.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "switch-inhibitors"
MAX_BYTES = 1 << 20


def _read(system: Path) -> dict[str, str] | bytes:
    try:
        with open(system / FILE, "rb") as handle:
            data = handle.read(MAX_BYTES)
    except OSError:
        return {}
    try:
        doc = json.loads(data)
    except ValueError:
        return data
    if isinstance(doc, dict):
        return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in doc.items()}
    return data


def boot_pending(profile: Path = Path("/nix/var/nix/profiles/system"),
                 current: Path = Path("/run/current-system")) -> bool:
    """A configuration waits for a reboot: the system profile (what boots next, moved by
    ``nixos-rebuild boot``) is not the running system. Part of "needs reboot" next to the booted
    vs. current kernel comparison, which a ``boot`` instead of a ``switch`` leaves unchanged."""
    try:
        return profile.resolve(strict=True) != current.resolve(strict=True)
    except OSError:
        return False


def changed(current: Path, new: Path) -> list[str]:
    """``key: old -> new`` for every inhibitor that changed; empty when a switch is fine."""
    old, incoming = _read(current), _read(new)
    if isinstance(old, dict) and isinstance(incoming, dict):
        return [f"{key}: {value} -> {incoming[key]}" for key, value in sorted(old.items())
                if key in incoming and incoming[key] != value]
    if old == incoming or old == {} or incoming == {}:
        return []
    return [f"{FILE}: {current / FILE} and {new / FILE} differ"]

"""Free space before a switch: ``/boot`` (and an ESP mounted below it) and the store's filesystem.

Why: a full ``/boot`` makes ``switch-to-configuration`` fail *after* the profile moved
(nixpkgs#23926), and a store that fills up midway leaves a failed build; both are cheap to see
coming. The numbers come from ``statvfs`` (``f_bavail``: what ``df`` calls available); the
requirement for ``/boot`` is sized from what the running system needs there, its kernel plus
initrd, times ``boot_kernel_factor``, never below ``boot_min_free``.

Which paths: the configured boot paths (the NixOS module renders ``/boot`` and
``boot.loader.efi.efiSysMountPoint``) plus every mount point below them in the mount table (an ESP
at ``/boot/efi`` that the configuration does not name). A boot path that does not exist is skipped
(no separate boot filesystem, a container). The store path is checked at its nearest existing
directory. Paths on one filesystem are checked once, against the largest requirement.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .settings import MIB, Preflight

CURRENT_SYSTEM = Path("/run/current-system")
MOUNTS = Path("/proc/self/mounts")


@dataclass(frozen=True)
class Need:
    """One filesystem's free space against what the switch needs there."""

    paths: tuple[str, ...]  # every checked path on this filesystem, the first one names it
    free: int
    required: int
    why: str  # how ``required`` was arrived at

    @property
    def short(self) -> bool:
        return self.free < self.required

    def describe(self) -> str:
        where = self.paths[0] + (f" (same filesystem as {', '.join(self.paths[1:])})" if self.paths[1:] else "")
        return (f"{where} has {self.free} bytes free ({human(self.free)}), {self.required} bytes "
                f"({human(self.required)}) required: {self.why}")


def human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def free_bytes(path: str) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def kernel_initrd_bytes(current_system: Path = CURRENT_SYSTEM) -> int:
    """Sizes of the running system's ``kernel`` and ``initrd`` (link targets); 0 for what is absent."""
    total = 0
    for name in ("kernel", "initrd"):
        try:
            total += os.stat(current_system / name).st_size
        except OSError:
            pass
    return total


def _unescape(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_below(roots: Iterable[str], mounts: Path = MOUNTS) -> list[str]:
    """Mount points strictly below one of ``roots`` (an ESP at /boot/efi), in mount table order."""
    try:
        lines = mounts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    prefixes = [root.rstrip("/") + "/" for root in roots]
    found: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 2:
            continue
        point = _unescape(fields[1])
        if any(point.startswith(prefix) for prefix in prefixes) and point not in found:
            found.append(point)
    return found


def _existing_parent(path: str) -> str:
    candidate = Path(path)
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return str(candidate)


def needs(settings: Preflight, *, current_system: Path = CURRENT_SYSTEM, mounts: Path = MOUNTS) -> list[Need]:
    """Every filesystem the switch writes to, with its free and required bytes."""
    pair = kernel_initrd_bytes(current_system)
    sized = settings.boot_kernel_factor * pair
    boot_required = max(settings.boot_min_free, sized)
    boot_why = (f"{settings.boot_kernel_factor} x the running kernel+initrd ({human(pair)})"
                if sized >= settings.boot_min_free else "the floor preflight.boot_min_free")
    if not pair:
        boot_why = f"the floor preflight.boot_min_free (no kernel/initrd under {current_system} to size from)"
    wanted: list[tuple[str, int, str]] = []
    boot = [p for p in settings.boot_paths if os.path.isdir(p)]
    for path in [*boot, *mounts_below(boot, mounts)]:
        wanted.append((path, boot_required, boot_why))
    wanted.append((_existing_parent(settings.store_path) if settings.store_path else "/", settings.store_min_free,
                   "the floor preflight.store_min_free for the build"))
    by_device: dict[int, list[tuple[str, int, str]]] = {}
    for path, required, why in wanted:
        try:
            device = os.stat(path).st_dev
        except OSError:
            continue
        entries = by_device.setdefault(device, [])
        if path not in [e[0] for e in entries]:
            entries.append((path, required, why))
    result = []
    for entries in by_device.values():
        _, required, why = max(entries, key=lambda e: e[1])
        result.append(Need(tuple(e[0] for e in entries), free_bytes(entries[0][0]), required, why))
    return result


def shortfalls(settings: Preflight, **paths: Path) -> list[Need]:
    """The filesystems with too little free space; empty when the switch may go ahead (or is off)."""
    if not settings.enable:
        return []
    return [need for need in needs(settings, **paths) if need.short]


def summary(needs: Sequence[Need]) -> str:
    """One line for the build log of an allowed switch: every filesystem, free against required."""
    return ", ".join(f"{' + '.join(n.paths)} {human(n.free)} free ({human(n.required)} required)" for n in needs)


def refusal(short: Sequence[Need]) -> str:
    """The one line the dashboard shows as the command's error."""
    return ("not enough free space for a switch: " + "; ".join(n.describe() for n in short)
            + "; free space there (e.g. nix-collect-garbage -d) or lower the preflight thresholds")

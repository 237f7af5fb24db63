"""The ``[preflight]`` and ``[retention]`` tables of the agent's TOML, parsed in one place.

Both the agent (Home Manager: it checks ``/nix/store`` itself) and the root side (NixOS: it reads
the TOML the module rendered into the store) read these tables, so one parser decides what a good
value is and both refuse a bad one with the same line. A table that is absent switches its feature
off: an older module, the nix-darwin module and hand-written configs keep today's behaviour; the
modules render ``[preflight]`` by default (``preflight.enable``), ``[retention]`` only when asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TABLES = ("preflight", "retention")
MIB = 1 << 20
GIB = 1 << 30

# Why these defaults: a NixOS kernel plus initrd is 20-80 MiB; a switch that changes either copies
# the new pair to /boot (systemd-boot, GRUB with a separate /boot) before it removes an old one, so
# /boot must hold one more pair, twice for slack. A build that runs out of store space midway
# leaves a half-written generation and a failed switch; 1 GiB is the floor below which even a small
# update does not fit (an operator with big closures raises it).
BOOT_KERNEL_FACTOR = 2
BOOT_MIN_FREE = 64 * MIB
STORE_MIN_FREE = 1 * GIB
MAX_BYTES = 1 << 50  # a typo guard: 1 PiB
MAX_GENERATIONS = 10_000


@dataclass(frozen=True)
class Preflight:
    enable: bool = False
    boot_paths: tuple[str, ...] = ()
    store_path: str = "/nix/store"
    boot_kernel_factor: int = BOOT_KERNEL_FACTOR
    boot_min_free: int = BOOT_MIN_FREE
    store_min_free: int = STORE_MIN_FREE
    switch_inhibitors: bool = False  # on by default in a [preflight] table, independent of ``enable``


@dataclass(frozen=True)
class Retention:
    keep_generations: int | None = None  # None: every generation is kept (the default)
    gc: bool = False

    @property
    def enabled(self) -> bool:
        return self.keep_generations is not None or self.gc


@dataclass(frozen=True)
class Guard:
    preflight: Preflight = field(default_factory=Preflight)
    retention: Retention = field(default_factory=Retention)


_PREFLIGHT_KEYS = {"enable": "bool", "boot_paths": "paths", "store_path": "path",
                   "boot_kernel_factor": ("int", 0, 100), "boot_min_free": ("int", 0, MAX_BYTES),
                   "store_min_free": ("int", 0, MAX_BYTES), "switch_inhibitors": "bool"}
_RETENTION_KEYS = {"keep_generations": ("int", 1, MAX_GENERATIONS), "gc": "bool"}


def _value(table: str, key: str, kind: Any, raw: Any, where: str, problems: list[str]) -> Any:
    name = f"{table}.{key} (in {where})"
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        problems.append(f"{name}: must be true or false (got {raw!r})")
    elif kind == "path":
        if isinstance(raw, str) and raw.startswith("/"):
            return raw
        problems.append(f"{name}: must be an absolute path (got {raw!r})")
    elif kind == "paths":
        if isinstance(raw, list) and all(isinstance(p, str) and p.startswith("/") for p in raw):
            return tuple(raw)
        problems.append(f"{name}: must be a list of absolute paths (got {raw!r})")
    else:
        _, low, high = kind
        if isinstance(raw, int) and not isinstance(raw, bool) and low <= raw <= high:
            return raw
        problems.append(f"{name}: must be an integer between {low} and {high} (got {raw!r})")
    return None


def _table(doc: Mapping[str, Any], table: str, keys: Mapping[str, Any], where: str,
           problems: list[str]) -> dict[str, Any] | None:
    raw = doc.get(table)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(f"{table} (in {where}): must be a table (got {raw!r})")
        return None
    values: dict[str, Any] = {}
    for key, item in raw.items():
        if key not in keys:
            problems.append(f"{table}.{key} (in {where}): unknown setting")
            continue
        value = _value(table, key, keys[key], item, where, problems)
        if value is not None:
            values[key] = value
    return values


def parse(doc: Mapping[str, Any], where: str, problems: list[str]) -> Guard:
    """The guard settings of a loaded TOML document; each bad value appends one line to ``problems``."""
    pre = _table(doc, "preflight", _PREFLIGHT_KEYS, where, problems)
    ret = _table(doc, "retention", _RETENTION_KEYS, where, problems)
    preflight = Preflight(**{"enable": True, "switch_inhibitors": True, **pre}) if pre is not None else Preflight()
    retention = Retention(**ret) if ret is not None else Retention()
    return Guard(preflight, retention)

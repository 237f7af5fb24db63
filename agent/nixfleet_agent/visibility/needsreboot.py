"""Does this NixOS host run a kernel, initrd or module set other than the configuration it would
boot now? The rule of nixpkgs' ``system.autoUpgrade`` (``allowReboot``): compare what the
``kernel``, ``initrd`` and ``kernel-modules`` links of ``/run/booted-system`` point at with those
of the configuration in effect (``/run/current-system``). Only those three matter: everything else
a switch activates in place. In addition, when the system profile (the boot loader's default
entry) is neither the running nor the booted configuration, a ``nixos-rebuild boot`` (or a switch
that an inhibitor turned into a boot) is waiting for a reboot: reason ``boot-pending``.

Cheap by construction: a handful of ``readlink``/``lstat`` calls, no child process, and the
verdict is cached by the targets of the three top-level links, so an idle heartbeat only reads
three links. On macOS and under Home Manager the question has no answer the agent could act on:
``applicable`` is False and ``needed`` None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PARTS = ("kernel", "initrd", "kernel-modules")


@dataclass(frozen=True)
class RebootState:
    applicable: bool
    needed: bool | None  # None: not applicable, or the links could not be read
    reasons: tuple[str, ...] = ()
    detail: str = ""  # why it is unknown, for the status line
    booted: str = ""
    current: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"applicable": self.applicable, "needed": self.needed, "reasons": list(self.reasons),
                "detail": self.detail}


NOT_APPLICABLE = RebootState(False, None, (), "not applicable on this platform")


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


@dataclass
class RebootCheck:
    """``root`` is ``/`` on a host; tests point it at a tree of stand-in system profiles."""

    platform: str
    root: Path = Path("/")
    _key: tuple[str | None, ...] | None = field(default=None, init=False)
    _state: RebootState = field(default=NOT_APPLICABLE, init=False)

    def paths(self) -> tuple[Path, Path, Path]:
        return (self.root / "run/booted-system", self.root / "run/current-system",
                self.root / "nix/var/nix/profiles/system")

    def state(self) -> RebootState:
        if self.platform != "nixos":
            return NOT_APPLICABLE
        booted, current, profile = self.paths()
        key = (_readlink(booted), _readlink(current), _readlink(profile))
        if key != self._key:
            self._state = self._evaluate(booted, current, profile, key)
            self._key = key
        return self._state

    def _evaluate(self, booted: Path, current: Path, profile: Path, key: tuple[str | None, ...]) -> RebootState:
        if key[0] is None:
            return RebootState(True, None, (), f"{booted} is missing (not booted by NixOS' stage 2?)")
        if key[1] is None:
            return RebootState(True, None, (), f"{current} is missing")
        reasons = [part for part in PARTS if _readlink(booted / part) != _readlink(current / part)]
        try:
            booted_path, current_path = os.path.realpath(booted), os.path.realpath(current)
            next_boot = os.path.realpath(profile) if key[2] is not None else current_path
        except OSError as exc:  # pragma: no cover - realpath does not raise for missing parts
            return RebootState(True, None, (), f"cannot resolve system links: {exc}")
        if next_boot not in (current_path, booted_path):
            reasons.append("boot-pending")
        return RebootState(True, bool(reasons), tuple(reasons), "", booted_path, current_path)

"""The units the NixOS module renders (tests/golden/), adapted to the Debian container.

Only store paths change, so what runs is what NixOS would run: the same sandboxing, the same
credentials, the same path unit. Each `/nix/store/<hash>-<name>/<rest>` is mapped:
  - the agent's two executables      -> the venv the agent wheel is installed into
  - nixos-rebuild                    -> the shim tests/system/files/nixos-rebuild
  - the agent's TOML file            -> a generated file (the test's dashboard URL, repo URL)
  - any other `bin/X` or `sbin/X`    -> Debian's /usr/bin/X (checked to exist)
  - PATH entries of store packages   -> /usr/local/bin:/usr/bin:/bin (deduplicated)
  - anything else                    -> refused, naming the path and the unit, so a new kind of
                                        store reference in the golden files is a visible decision.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .rootfs import VENV_DIR

REPO_ROOT = Path(__file__).resolve().parents[3]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden" / "nixos"
SHIM_SOURCE = Path(__file__).resolve().parents[1] / "files" / "nixos-rebuild"

SHIM_PATH = "/usr/local/sbin/nixos-rebuild"
NIX_TOOLS_SOURCE = SHIM_SOURCE.with_name("nix-tools")  # nix, nix-env, nix-store stand-ins (/usr/local/bin)
NIX_TOOLS = ("nix", "nix-env", "nix-store")
NIX_ENV_SHIM_PATH = "/usr/local/sbin/nix-env"  # files/nix-env: --set for the health gate, else nix-tools
CONFIG_PATH = "/etc/nixfleet-agent/config.toml"
AGENT_EXES = ("nixfleet-agent", "nixfleet-agent-privileged")
UNIT_SUFFIXES = (".service", ".path", ".socket", ".timer")

STORE_PATH = re.compile(r"/nix/store/[0-9a-z]{32}-([^/\s\"':]+)((?:/[^\s\"':]*)?)")


class GoldenError(RuntimeError):
    pass


@dataclass(frozen=True)
class Unit:
    name: str
    text: str


def golden_units(golden_dir: Path = GOLDEN_DIR) -> list[Path]:
    """Unit files the NixOS module renders, as kept in `golden_dir`."""
    if not golden_dir.is_dir():
        return []
    return sorted(p for p in golden_dir.iterdir() if p.is_file() and p.name.endswith(UNIT_SUFFIXES)
                  and p.name.startswith("nixfleet-agent"))


def adapt(text: str, unit: str, exists: Callable[[str], bool]) -> str:
    """Replace every store path in `text` (a unit file) by its container counterpart."""

    def one(match: re.Match[str]) -> str:
        name, rest = match.group(1), match.group(2)
        exe = rest.rsplit("/", 1)[-1] if re.fullmatch(r"/s?bin/[^/]+", rest or "") else ""
        if exe in AGENT_EXES:
            return f"{VENV_DIR}/bin/{exe}"
        if exe == "nixos-rebuild":
            return SHIM_PATH
        if exe == "nix-env":  # the health gate's rollback sets the system profile with it
            return NIX_ENV_SHIM_PATH
        if name.endswith(".toml") and not rest:
            return CONFIG_PATH
        if exe:
            for candidate in (f"/usr/bin/{exe}", f"/usr/sbin/{exe}", f"/bin/{exe}"):
                if exists(candidate):
                    return candidate
            raise GoldenError(f"{unit}: {match.group(0)} has no counterpart in the container ({exe} not installed)")
        if rest in ("/bin", "/sbin"):
            return "/usr/local/bin:/usr/bin:/bin"
        if rest.startswith("/share/zoneinfo"):
            return "/usr/share/zoneinfo" + rest[len("/share/zoneinfo"):]
        if rest.endswith("/locale-archive"):
            return "/usr/lib/locale/locale-archive"
        raise GoldenError(f"{unit}: no mapping for store path {match.group(0)}; extend systier/units.py")

    adapted = STORE_PATH.sub(one, text)
    return re.sub(r"PATH=([^\"\n]*)", lambda m: "PATH=" + _dedupe_path(m.group(1)), adapted)


def _dedupe_path(value: str) -> str:
    seen: list[str] = []
    for entry in value.split(":"):
        if entry and entry not in seen:
            seen.append(entry)
    return ":".join(seen)


def directives(text: str, key: str) -> list[str]:
    """Values of `key=` lines in a unit file (for reading e.g. LoadCredential= of the golden unit)."""
    return [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(f"{key}=")]

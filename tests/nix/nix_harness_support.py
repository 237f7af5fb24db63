"""Running the shared nix-harness on this repository's module specs (tests/nix/specs/).

The harness evaluates the modules against the real NixOS systemd module and the real Home Manager
module set, with stub packages (nothing is built). Its public sources are prepared once per machine
(`nix-harness prepare`); without them these tests skip, naming what is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPECS = Path(__file__).resolve().parent / "specs"
GOLDEN = REPO / "tests" / "golden"

_STORE_PATH = re.compile(r"/nix/store/[0-9a-df-np-sv-z]{32}-")
NORMALIZED_STORE_PREFIX = "/nix/store/" + "0" * 32 + "-"


def harness_dir() -> Path:
    """$NIX_HARNESS, else the shared tools checkout next to the repository."""
    configured = os.environ.get("NIX_HARNESS")
    return Path(configured) if configured else REPO.parent / "shared" / "tools" / "nix-harness"


def sources_dir() -> Path:
    configured = os.environ.get("HARNESS_SRC")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nix-harness" / "src"


def require_harness() -> Path:
    """The harness executable, or skip the test saying what is absent."""
    if shutil.which("nix-instantiate") is None:
        pytest.skip("nix-instantiate is not installed (apt install nix-bin)")
    exe = harness_dir() / "nix-harness"
    if not exe.is_file():
        pytest.skip(f"nix-harness not found at {exe} (set NIX_HARNESS to its directory)")
    src = sources_dir()
    needed = [
        src / "nixpkgs-nixos" / "nixos" / "modules" / "system" / "boot" / "systemd.nix",
        src / "nix-community+home-manager" / "modules" / "modules.nix",
        src / "nix-community+nixpkgs.lib" / "lib" / "default.nix",
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.skip(f"harness sources absent in HARNESS_SRC={src} (run `nix-harness prepare`, see its README): "
                    + ", ".join(missing))
    return exe


def run(kind: str, spec: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`nix-harness KIND specs/SPEC -o OUT ARGS...`; stdout and stderr merged."""
    exe = require_harness()
    return subprocess.run([str(exe), kind, str(SPECS / spec), "-o", str(out), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def eval_json(spec: str, attr: str, *args: str) -> object:
    """Evaluate one attribute of a spec (e.g. ``config.systemd.units``) to JSON."""
    require_harness()
    env = dict(os.environ, HARNESS_SRC=str(sources_dir()))
    proc = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode",
         "-I", f"nix-harness={harness_dir()}", *args, "-A", attr, str(SPECS / spec)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def nix_arg(value: object) -> str:
    """A Nix expression for a JSON-like Python value (for ``--arg settings``)."""
    if isinstance(value, dict):
        return "{ " + " ".join(f"{json.dumps(k) if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_-]*', k) else k} = "
                               f"{nix_arg(v)};" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[ " + " ".join(nix_arg(v) for v in value) + " ]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return json.dumps(value)


def normalize(text: str) -> str:
    """Store hashes change with every source edit; golden files compare everything else."""
    return _STORE_PATH.sub(NORMALIZED_STORE_PREFIX, text)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd unit text -> {section: {key: [values in order]}}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def exposure(output: str, unit: str) -> float:
    match = re.search(rf"systemd-analyze security {re.escape(unit)}: ([0-9.]+)", output)
    assert match, f"no exposure score for {unit} in:\n{output}"
    return float(match.group(1))

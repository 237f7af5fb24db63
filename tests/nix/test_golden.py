"""The rendered units, plists and config files committed under tests/golden/ match the modules.

The real-systemd tests install exactly these files, so they must not drift from what the modules
produce. Store hashes are normalized (they change with every source edit). When a module change is
intended, regenerate and review the diff:

    NIXFLEET_UPDATE_GOLDEN=1 python3 -m pytest tests/nix/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nix_harness_support import GOLDEN, eval_json, normalize, run
from support import toml_dumps

UPDATE = os.environ.get("NIXFLEET_UPDATE_GOLDEN") == "1"


def rendered(tmp: Path) -> dict[str, str]:
    """relative golden path -> normalized text, rendered now by the harness."""
    files: dict[str, str] = {}

    proc = run("nixos", "nixos-good.nix", tmp / "nixos")
    assert proc.returncode == 0, proc.stdout
    for name in ("nixfleet-agent.service", "nixfleet-agent-privileged.service"):
        files[f"nixos/{name}"] = (tmp / "nixos" / "units" / name).read_text()
    path_unit = eval_json("nixos-good.nix", 'config.systemd.units."nixfleet-agent-privileged.path".text')
    assert isinstance(path_unit, str)
    files["nixos/nixfleet-agent-privileged.path"] = path_unit
    files["nixos/nixfleet-agent.toml"] = toml_dumps(eval_json("nixos-good.nix", "config.services.nixfleet-agent.settings"))  # type: ignore[arg-type]

    proc = run("hm", "hm-good.nix", tmp / "hm-darwin")
    assert proc.returncode == 0, proc.stdout
    for label in ("com.nixfleet.agent", "com.nixfleet.watchdog"):
        files[f"hm-darwin/{label}.plist"] = (tmp / "hm-darwin" / "launchd" / f"{label}.plist").read_text()
    files["hm-darwin/nixfleet-agent.toml"] = toml_dumps(eval_json("hm-good.nix", "config.services.nixfleet-agent.settings"))  # type: ignore[arg-type]

    proc = run("darwin", "darwin-good.nix", tmp / "darwin")
    assert proc.returncode == 0, proc.stdout
    for label in ("com.nixfleet.agent", "com.nixfleet.agent-privileged", "com.nixfleet.watchdog"):
        files[f"darwin/{label}.plist"] = (tmp / "darwin" / "darwin" / "launchDaemons" / f"{label}.plist").read_text()
    start = eval_json("darwin-good.nix", 'config.environment.etc."nixfleet-agent/privileged".source.text')
    assert isinstance(start, str)
    files["darwin/nixfleet-agent-privileged-start"] = start
    files["darwin/nixfleet-agent.toml"] = toml_dumps(eval_json("darwin-good.nix", "config.services.nixfleet-agent.settings"))  # type: ignore[arg-type]

    proc = run("hm", "hm-good.nix", tmp / "hm-linux", "--argstr", "system", "x86_64-linux")
    assert proc.returncode == 0, proc.stdout
    files["hm-linux/nixfleet-agent.service"] = (tmp / "hm-linux" / "systemd-user" / "nixfleet-agent.service").read_text()
    files["hm-linux/nixfleet-agent.toml"] = toml_dumps(
        eval_json("hm-good.nix", "config.services.nixfleet-agent.settings", "--argstr", "system", "x86_64-linux"))  # type: ignore[arg-type]
    return {name: normalize(text) for name, text in files.items()}


def test_golden_files_match_the_modules(tmp_path: Path) -> None:
    current = rendered(tmp_path)
    if UPDATE:
        for name, text in current.items():
            target = GOLDEN / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    drifted = [name for name, text in current.items()
               if not (GOLDEN / name).is_file() or (GOLDEN / name).read_text() != text]
    assert not drifted, (
        f"golden files differ from the modules: {', '.join(drifted)}; if the change is intended run "
        "`NIXFLEET_UPDATE_GOLDEN=1 python3 -m pytest tests/nix/test_golden.py` and review the diff")


def test_golden_config_files_load_in_the_agent() -> None:
    config = pytest.importorskip("nixfleet_agent.config")
    for name in ("nixos", "hm-linux", "darwin"):
        path = GOLDEN / name / "nixfleet-agent.toml"
        if not path.is_file():
            pytest.skip(f"{path} not generated yet")
        env = {"NIXFLEET_TOKEN": "test-token", "NIXFLEET_STATE_DIR": str(path.parent)}
        cfg = config.load({"config": str(path)}, env)
        assert cfg.url == "wss://fleet.example.com/ws"

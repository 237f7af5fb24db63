"""Issue 16's module options (``reboot``, ``metrics``) through the nix-harness: rendered into the
TOML the agent reads (and accepted by the agent's own parser), the NixOS unit gets a textfile
directory its dynamic user can write and node_exporter can read, hardening unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import test_darwin_module as darwin_mod
import test_hm_module as hm_mod
import test_nixos_module as nixos_mod
from nix_harness_support import eval_json, exposure, parse_unit, run
from nixfleet_agent.config import load
from support import toml_dumps

OPTIONS = {
    "reboot": {"allow": True, "window": {"lower": "23:30", "upper": "04:00"}, "randomizedDelaySec": 1800},
    "metrics": {"textfileDirectory": "/run/nixfleet-agent-metrics"},
}
RENDERED = {
    "reboot": {"allow": True, "randomized_delay_sec": 1800, "window": {"lower": "23:30", "upper": "04:00"}},
    "metrics": {"textfile_directory": "/run/nixfleet-agent-metrics"},
}


def rendered_settings(out: Path) -> dict[str, object]:
    """The harness stands in for pkgs.formats.toml with a comment line and the settings as JSON."""
    text = (out / "scripts" / "nixfleet-agent.toml").read_text()
    return json.loads("\n".join(line for line in text.splitlines() if not line.startswith("#")))


def as_toml(value: dict[str, object]) -> str:
    """The settings as TOML: flat keys, then one [table] per nested table (inline sub-tables)."""
    flat = {k: v for k, v in value.items() if not isinstance(v, dict)}
    text = toml_dumps(flat)
    for name, table in value.items():
        if isinstance(table, dict):
            text += f"[{name}]\n"
            for key, item in table.items():
                rendered = ("{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in item.items()) + " }"
                            if isinstance(item, dict) else json.dumps(item))
                text += f"{key} = {rendered}\n"
    return text


@pytest.fixture(scope="module")
def nixos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("nixos-visibility")
    proc = run("nixos", "nixos-good.nix", out, "--security", "--arg", "settings", nixos_mod.settings(**OPTIONS))
    assert proc.returncode == 0, proc.stdout
    return out, proc.stdout


def test_nixos_renders_the_tables_the_agent_reads(nixos: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = nixos
    rendered = rendered_settings(out)
    assert {k: rendered[k] for k in RENDERED} == RENDERED
    path = tmp_path / "nixfleet-agent.toml"
    path.write_text(as_toml(rendered))
    parsed = load({"config": str(path)}, {"NIXFLEET_TOKEN": "t", "NIXFLEET_STATE_DIR": str(tmp_path)}).visibility
    assert parsed.reboot_allow and parsed.window_text == "23:30-04:00" and parsed.randomized_delay_sec == 1800
    assert parsed.textfile_directory == "/run/nixfleet-agent-metrics"


def test_nixos_textfile_directory_is_the_units_runtime_directory(nixos: tuple[Path, str]) -> None:
    out, output = nixos
    service = parse_unit((out / "units" / "nixfleet-agent.service").read_text())["Service"]
    assert service["RuntimeDirectory"] == ["nixfleet-agent-metrics"]
    assert service["RuntimeDirectoryMode"] == ["0755"]  # node_exporter, another user, reads the 0644 file
    for key, value in nixos_mod.HARDENING.items():
        assert service.get(key) == [value], key
    if "systemd-analyze security nixfleet-agent.service" in output:
        score = exposure(output, "nixfleet-agent.service")
        print(f"systemd-analyze security nixfleet-agent.service with metrics: exposure {score}")
        assert score <= 1.2


def test_defaults_render_nothing_new() -> None:
    value = eval_json("nixos-good.nix", "config.services.nixfleet-agent.settings")
    assert isinstance(value, dict) and "reboot" not in value and "metrics" not in value
    units = eval_json("nixos-good.nix", 'config.systemd.services.nixfleet-agent.serviceConfig')
    assert isinstance(units, dict) and "RuntimeDirectory" not in units


def test_nixos_refuses_a_directory_outside_run(tmp_path: Path) -> None:
    proc = run("nixos", "nixos-good.nix", tmp_path, "--arg", "settings",
               nixos_mod.settings(metrics={"textfileDirectory": "/var/lib/node-exporter"}))
    assert proc.returncode != 0
    assert "metrics.textfileDirectory must be a directory under /run on NixOS" in proc.stdout, proc.stdout


@pytest.mark.parametrize("window", [{"lower": "25:00", "upper": "01:00"}, {"lower": "1am", "upper": "02:00"}])
def test_bad_window_is_a_type_error(tmp_path: Path, window: dict[str, str]) -> None:
    proc = run("nixos", "nixos-good.nix", tmp_path, "--arg", "settings",
               nixos_mod.settings(reboot={"allow": True, "window": window}))
    assert proc.returncode != 0 and "is not of type" in proc.stdout, proc.stdout


def test_home_manager_and_darwin_render_the_same_tables() -> None:
    hm = eval_json("hm-good.nix", "config.services.nixfleet-agent.settings", "--arg", "settings",
                   hm_mod.settings(metrics={"textfileDirectory": "/home/alice/.local/state/prom"},
                                   reboot={"allow": False}))
    assert isinstance(hm, dict) and hm["metrics"] == {"textfile_directory": "/home/alice/.local/state/prom"}
    assert "reboot" not in hm
    dw = eval_json("darwin-good.nix", "config.services.nixfleet-agent.settings", "--arg", "settings",
                   darwin_mod.settings(**OPTIONS))
    assert isinstance(dw, dict) and {k: dw[k] for k in RENDERED} == RENDERED

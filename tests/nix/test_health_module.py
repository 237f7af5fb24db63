"""``services.nixfleet-agent.health.*`` in the NixOS and Home Manager modules: the documented
defaults, every option rendered into the ``[health]`` table the agent and root read (and that table
accepted by the agent's own parser without a problem), and bad values refused by the option types."""

from __future__ import annotations

from pathlib import Path

import pytest

import os
import subprocess

from nix_harness_support import eval_json, harness_dir, nix_arg, require_harness, sources_dir
from support import toml_dumps

from nixfleet_agent.health import settings as health_settings

NIXOS = {"enable": True, "url": "wss://fleet.example.com/ws", "tokenFile": "/run/agenix/nixfleet-token",
         "repoUrl": "git@github.com:example/nixcfg.git"}
HM = {"enable": True, "url": "wss://fleet.example.com/ws", "tokenFile": "/home/alice/.config/nixfleet/token",
      "repoUrl": "git@github.com:example/nixcfg.git"}
HEALTH = {
    "gracePeriod": 300, "units": ["nginx.service"], "noFailedUnits": False, "ignoreFailedUnits": ["x.timer"],
    "http": [{"url": "http://127.0.0.1:8080/healthz"}, {"url": "http://[::1]/", "status": 204}],
    "tcp": ["127.0.0.1:5432"], "commands": [{"argv": ["/run/current-system/sw/bin/true"]},
                                             {"argv": ["/bin/pg_isready", "-q"], "user": "postgres"}],
    "requireReconnect": False, "onFailure": "report",
}
RENDERED = {
    "enable": True, "grace_period": 300, "units": ["nginx.service"], "no_failed_units": False,
    "ignore_failed_units": ["x.timer"],
    "http": [{"url": "http://127.0.0.1:8080/healthz", "status": 200}, {"url": "http://[::1]/", "status": 204}],
    "tcp": ["127.0.0.1:5432"],
    "commands": [{"argv": ["/run/current-system/sw/bin/true"]}, {"argv": ["/bin/pg_isready", "-q"], "user": "postgres"}],
    "require_reconnect": False, "on_failure": "report", "allow_remote": False,
}
DEFAULTS = {"enable": True, "grace_period": 120, "units": [], "no_failed_units": True, "ignore_failed_units": [],
            "http": [], "tcp": [], "commands": [], "require_reconnect": True, "on_failure": "rollback",
            "allow_remote": False}


def health_of(spec: str, agent: dict[str, object], *extra: str) -> object:
    value = eval_json(spec, "config.services.nixfleet-agent.settings.health", "--arg", "settings",
                      nix_arg({"services": {"nixfleet-agent": agent}}), *extra)
    return value


@pytest.mark.parametrize("spec,agent", [("nixos-good.nix", NIXOS), ("hm-good.nix", HM)])
def test_defaults_are_the_documented_ones(spec: str, agent: dict[str, object]) -> None:
    assert health_of(spec, agent) == DEFAULTS


@pytest.mark.parametrize("spec,agent", [("nixos-good.nix", NIXOS), ("hm-good.nix", HM)])
def test_every_option_is_rendered_and_the_agent_accepts_it(spec: str, agent: dict[str, object]) -> None:
    table = health_of(spec, {**agent, "health": HEALTH})
    assert table == RENDERED
    parsed = health_settings.parse(table)
    assert not parsed.problems and parsed.grace_period == 300 and parsed.commands[1].user == "postgres"
    assert toml_dumps({"health": table}).count("[[health.http]]") == 2  # lists of tables as TOML renders them


def test_a_settings_key_overrides_one_health_option() -> None:
    table = health_of("nixos-good.nix", {**NIXOS, "settings": {"health": {"grace_period": 600}}})
    assert isinstance(table, dict) and table["grace_period"] == 600 and table["enable"] is True


@pytest.mark.parametrize("health,message", [
    ({"onFailure": "pray"}, "is not of type"),
    ({"gracePeriod": 1}, "is not of type"),
    ({"http": [{"url": "ftp://127.0.0.1/"}]}, "is not of type"),
    ({"commands": [{"argv": []}]}, "is not of type"),
])
def test_bad_values_are_type_errors(health: dict[str, object], message: str) -> None:
    require_harness()
    env = dict(os.environ, HARNESS_SRC=str(sources_dir()))
    got = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode", "-I", f"nix-harness={harness_dir()}",
         "--arg", "settings", nix_arg({"services": {"nixfleet-agent": {**NIXOS, "health": health}}}),
         "-A", "config.services.nixfleet-agent.settings.health",
         str(Path(__file__).resolve().parent / "specs" / "nixos-good.nix")],
        capture_output=True, text=True, env=env, timeout=300)
    assert got.returncode != 0 and message in got.stderr, got.stderr[-1500:]

"""The guard-rail options (``preflight.*``, ``retention.*``) rendered into the TOML tables the agent
and the root side read (guard/settings.py), evaluated by the nix-harness against the real modules."""

from __future__ import annotations

from typing import Any

import pytest

from nix_harness_support import eval_json, nix_arg
from test_nixos_module import GOOD

SETTINGS = "config.services.nixfleet-agent.settings"


def nixos(agent: dict[str, Any] | None = None, **host: Any) -> Any:
    value = {"services": {"nixfleet-agent": {**GOOD, **(agent or {})}}, **host}
    return eval_json("nixos-good.nix", SETTINGS, "--arg", "settings", nix_arg(value))


def test_nixos_checks_boot_and_a_separate_esp_named_by_the_boot_loader() -> None:
    rendered = nixos(boot={"loader": {"efi": {"efiSysMountPoint": "/boot/efi"}}})
    assert rendered["preflight"]["boot_paths"] == ["/boot", "/boot/efi"]
    # systemd-boot's usual layout: the ESP is /boot itself, checked once
    assert nixos(boot={"loader": {"efi": {"efiSysMountPoint": "/boot"}}})["preflight"]["boot_paths"] == ["/boot"]


def test_thresholds_and_inhibitors_are_rendered_from_the_options() -> None:
    rendered = nixos({"preflight": {"bootMinFree": 128 << 20, "bootKernelFactor": 3, "storeMinFree": 5 << 30,
                                    "switchInhibitors": False}})
    assert rendered["preflight"] == {"enable": True, "boot_paths": ["/boot"], "store_path": "/nix/store",
                                     "boot_min_free": 128 << 20, "boot_kernel_factor": 3,
                                     "store_min_free": 5 << 30, "switch_inhibitors": False}
    assert nixos({"preflight": {"enable": False}})["preflight"]["enable"] is False


def test_settings_override_one_preflight_key() -> None:
    rendered = nixos({"settings": {"preflight": {"boot_paths": ["/efi"]}}})
    assert rendered["preflight"]["boot_paths"] == ["/efi"] and rendered["preflight"]["store_min_free"] == 1 << 30


def test_retention_is_off_by_default_and_rendered_when_asked() -> None:
    assert "retention" not in nixos()
    assert nixos({"retention": {"keepGenerations": 10}})["retention"] == {"keep_generations": 10, "gc": False}
    assert nixos({"retention": {"gc": {"enable": True}}})["retention"] == {"gc": True}


@pytest.mark.parametrize(("agent", "message"), [
    ({"retention": {"keepGenerations": 0}}, "keepGenerations"),
    ({"preflight": {"bootKernelFactor": 101}}, "bootKernelFactor"),
    ({"preflight": {"storeMinFree": "1G"}}, "storeMinFree"),
])
def test_bad_values_fail_evaluation_naming_the_option(agent: dict[str, Any], message: str) -> None:
    with pytest.raises(AssertionError) as err:
        nixos(agent)
    assert message in str(err.value) and "is not of type" in str(err.value)


def test_home_manager_checks_only_the_store() -> None:
    rendered = eval_json("hm-good.nix", SETTINGS, "--argstr", "system", "x86_64-linux")
    assert isinstance(rendered, dict)
    assert rendered["preflight"]["boot_paths"] == [] and rendered["preflight"]["store_path"] == "/nix/store"
    assert "retention" not in rendered


@pytest.mark.parametrize("name", ["preflight.enable", "preflight.bootMinFree", "preflight.bootKernelFactor",
                                  "preflight.storeMinFree", "preflight.switchInhibitors",
                                  "retention.keepGenerations", "retention.gc.enable"])
def test_the_options_are_documented(name: str) -> None:
    text = eval_json("nixos-good.nix", f"options.services.nixfleet-agent.{name}.description")
    assert isinstance(text, str) and len(text) > 40, name

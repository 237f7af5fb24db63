"""docs/examples/ is what the README shows for adding the flake, a NixOS host and a Home Manager
configuration: each file evaluates as written (through the nix-harness, with stand-ins only for
nixpkgs, Home Manager's entry point and agenix), and the README contains each file verbatim.

The README used to reference `config.sops.secrets...` in a host that imported only agenix, so
following it failed evaluation; and it named the input `nixfleet-agent` while the agent moved
`nixfleet`. Keeping the examples as evaluated files makes both impossible to regress.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from nix_harness_support import REPO, parse_unit, run

EXAMPLES = REPO / "docs" / "examples"
EXAMPLE_FILES = ["flake.nix", "hosts/web1.nix", "hosts/laptop.nix"]


def test_nixos_example_evaluates(tmp_path: Path) -> None:
    proc = run("nixos", "examples.nix", tmp_path, "--security")
    assert proc.returncode == 0, proc.stdout
    service = parse_unit((tmp_path / "units" / "nixfleet-agent.service").read_text())["Service"]
    # agenix' secret paths, handed over as credentials
    assert service["LoadCredential"] == ["token:/run/agenix/nixfleet-token",
                                         "ssh-key:/run/agenix/nixfleet-deploy-key"]
    assert "-flake-provided-agent-1/bin/nixfleet-agent --config " in service["ExecStart"][0]
    if "systemd-analyze security nixfleet-agent.service" in proc.stdout:
        assert "systemd-analyze security nixfleet-agent.service: 1.2 OK" in proc.stdout


def test_home_manager_example_evaluates(tmp_path: Path) -> None:
    proc = run("hm", "examples.nix", tmp_path, "--argstr", "which", "hm")
    assert proc.returncode == 0, proc.stdout
    text = (tmp_path / "launchd" / "com.nixfleet.agent.plist").read_text()
    assert "-flake-provided-agent-1/bin/nixfleet-agent" in text
    assert "/Users/alice/.config/nixfleet/token" not in text  # the agent reads it; the plist never names it


def test_example_flake_names_the_input_the_agent_moves() -> None:
    from nixfleet_agent.config import DEFAULT_AGENT_INPUT

    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                           f"builtins.attrNames (import {EXAMPLES / 'flake.nix'}).inputs"],
                          capture_output=True, text=True)
    if proc.returncode != 0 and "nix-instantiate" in proc.stderr:
        pytest.skip("nix-instantiate is not installed (apt install nix-bin)")
    assert proc.returncode == 0, proc.stderr
    assert DEFAULT_AGENT_INPUT in proc.stdout


def readme_block(readme: str, name: str) -> str | None:
    """The ```nix block right after `<!-- example: docs/examples/NAME -->`, or None without the marker."""
    marker = f"<!-- example: docs/examples/{name} -->"
    if marker not in readme:
        return None
    match = re.match(r"\s*```nix\n(.*?)```", readme.split(marker, 1)[1], re.DOTALL)
    assert match, f"README.md: {marker} is not followed by a ```nix block"
    return match.group(1)


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_readme_shows_each_example_verbatim(name: str) -> None:
    block = readme_block((REPO / "README.md").read_text(), name)
    assert block is not None, f"README.md has no `<!-- example: docs/examples/{name} -->` marker before its ```nix block"
    assert block == (EXAMPLES / name).read_text(), f"README.md's block differs from docs/examples/{name}"

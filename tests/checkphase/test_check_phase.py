"""The package's check phase as nixpkgs runs it (see nixbuild.py), from what package.nix says.

`nix build .#nixfleet-agent` cannot run on every contributor's machine; this reproduces its
conditions closely enough to catch what breaks only there: the package and its dependencies on
PYTHONPATH only (a child that drops it cannot import the agent), only the fileset's files, a
read-only tree, no network but loopback, not root, pytest 8.3 (nixos-25.05).
"""

from __future__ import annotations

import os
import re

import pytest

import nixbuild
from package_nix import read_package


def test_package_check_phase_passes() -> None:
    try:
        pkg = read_package()
        output, times = nixbuild.check_phase(pkg)
    except nixbuild.Unavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"check-phase tier cannot run on CI: {exc}")
        pytest.skip(f"check-phase tier: {exc}")
    summary = [line for line in output.splitlines() if re.match(r"=+ .*(passed|failed|error).* =+$", line)]
    print("\ncheck phase:", summary[-1] if summary else "(no pytest summary)")
    print("timings:", ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    assert summary and " passed" in summary[-1], "\n".join(output.splitlines()[-40:])


def test_pytest_is_the_oldest_supported() -> None:
    """The tier is only worth its name while it uses nixos-25.05's pytest."""
    assert nixbuild.PYPI["pytestCheckHook"].startswith("pytest==8.3.")


def test_package_nix_is_read_not_guessed() -> None:
    pkg = read_package()
    assert "tests/core" in pkg.test_paths and "websocket-client" in pkg.dependencies
    assert {"git", "openssl"} <= set(pkg.check_tools) and "setuptools" in pkg.build_system
    assert "cd .." in pkg.pre_check and pkg.source_root == "source/agent"

"""Fixtures of the systemd tier: a cached Debian rootfs booted with systemd-nspawn.

The tier skips with a reason where it cannot run (not root, tools missing) except on CI
(CI=true), where that is a failure: a green CI must mean the units ran under a real systemd.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dashboard import Dashboard
from systier import container, prereqs, rootfs, units

EXCHANGE_INSIDE = "/srv/exchange"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "system: needs root, systemd-nspawn and debootstrap (tests/system)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.system)


def require_system_tier() -> None:
    reason = prereqs.missing_reason()
    if reason is None:
        return
    if prereqs.on_ci():
        pytest.fail(f"system tier cannot run on CI: {reason}", pytrace=False)
    pytest.skip(f"system tier: {reason}")


@pytest.fixture(scope="session")
def system_rootfs() -> Path:
    require_system_tier()
    try:
        return rootfs.ensure()
    except rootfs.RootfsError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def exchange_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host directory bind-mounted read-write at /srv/exchange inside the container."""
    path = tmp_path_factory.mktemp("system-exchange")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def system_container(system_rootfs: Path, exchange_dir: Path) -> Iterator[container.Container]:
    box = container.started(system_rootfs, [container.Bind(exchange_dir, EXCHANGE_INSIDE)])
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The NixOS module's rendered units (tests/golden/, kept in sync with modules/nixos.nix).

    NIXFLEET_TEST_GOLDEN_DIR points at another rendering, e.g. fresh nix-harness output.
    """
    path = Path(os.environ.get("NIXFLEET_TEST_GOLDEN_DIR") or units.GOLDEN_DIR)
    if not units.golden_units(path):
        message = f"no rendered nixfleet-agent units in {path}"
        if prereqs.on_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def dash(request: pytest.FixtureRequest) -> Iterator[Dashboard]:
    """The module's reference dashboard on the host; it accepts the test module's ``TOKEN``."""
    board = Dashboard(token=request.module.TOKEN).start()
    try:
        yield board
    finally:
        board.close()

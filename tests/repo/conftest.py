"""Fixtures for the repository tests: remotes, loopback servers (sshd, git daemon, http-backend)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import repo_servers  # noqa: E402
from repo_support import NIX, Collect, Emitted, Remote  # noqa: E402


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path / "remotes")


@pytest.fixture
def run() -> Collect:
    return Collect()


@pytest.fixture
def emitted() -> Emitted:
    return Emitted()


@pytest.fixture
def need_nix() -> None:
    if NIX is None:
        pytest.skip("nix is not installed (the update tests run a real 'nix flake update')")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[repo_servers.Sshd]:
    reason = repo_servers.have_sshd()
    if reason:
        pytest.skip(reason)
    server = repo_servers.Sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of bare repositories exported by the module's git daemon / http-backend."""
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def git_daemon(served: Path) -> Iterator[repo_servers.GitDaemon]:
    if subprocess.run(["git", "daemon", "-h"], capture_output=True).returncode not in (0, 129):
        pytest.skip("git daemon is not available")
    server = repo_servers.GitDaemon(served)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def http_backend(served: Path) -> Iterator[repo_servers.HttpBackend]:
    server = repo_servers.HttpBackend(served)
    try:
        yield server
    finally:
        server.close()


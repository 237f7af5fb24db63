"""agent/pyproject.toml, the file the Nix package builds from, also builds a plain wheel with pip.

Non-Nix users (and the Nix build's `pypaBuildHook`) rely on the same metadata: the wheel installs
into a fresh virtualenv, both console scripts exist, and `nixfleet-agent --version` prints the
version from the single VERSION file and `source_commit unknown` (only the Nix build writes
SOURCE_COMMIT). pip builds as a user's pip would, in an isolated build environment, so it needs
setuptools from the configured package index (or a local mirror of it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "agent"
VERSION = (AGENT / "nixfleet_agent" / "VERSION").read_text().strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy: an in-tree build would leave build/ and egg-info changes in the checkout
    source = tmp / "agent"
    shutil.copytree(AGENT, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "SOURCE_COMMIT"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                           "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "No matching distribution found for setuptools" in proc.stdout + proc.stderr:
        pytest.skip("pip cannot fetch setuptools for the isolated build (no package index reachable)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = (tmp / "dist").glob("nixfleet_agent-*.whl")
    return built


def test_wheel_metadata(wheel: Path) -> None:
    assert wheel.name == f"nixfleet_agent-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = Parser().parsestr(archive.read(f"nixfleet_agent-{VERSION}.dist-info/METADATA").decode())
        entry_points = archive.read(f"nixfleet_agent-{VERSION}.dist-info/entry_points.txt").decode()
    assert {"nixfleet_agent/VERSION", "nixfleet_agent/py.typed", "nixfleet_agent/commands/__init__.py"} <= names
    assert "nixfleet_agent/SOURCE_COMMIT" not in names
    requires = meta.get_all("Requires-Dist") or []
    assert sorted(r.split(">")[0].split(";")[0].strip() for r in requires) == ["tomli", "websocket-client"]
    assert any(r.startswith("tomli") and 'python_version < "3.11"' in r for r in requires)
    assert meta["Version"] == VERSION
    assert "nixfleet-agent = nixfleet_agent.cli:main" in entry_points
    assert "nixfleet-agent-privileged = nixfleet_agent.root.main:main" in entry_points


def test_wheel_installs_and_reports_its_version(wheel: Path, tmp_path: Path) -> None:
    if not (AGENT / "nixfleet_agent" / "cli.py").is_file():
        pytest.skip("nixfleet_agent.cli does not exist yet (the agent core provides it)")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    # this interpreter's pip, installing into the fresh environment (faster than ensurepip)
    pip = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "--disable-pip-version-check"]
    # dependencies are declared (checked above); --version needs none of them, so stay offline
    proc = subprocess.run([*pip, "install", "--no-index", "--no-deps", str(wheel)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (env_dir / "bin" / "nixfleet-agent-privileged").is_file()
    proc = subprocess.run([str(env_dir / "bin" / "nixfleet-agent"), "--version"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"nixfleet-agent {VERSION}"
    assert "source_commit unknown" in lines
    # and it is the wheel's code that ran, not the checkout's
    where = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import nixfleet_agent; print(nixfleet_agent.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert str(env_dir) in where.stdout

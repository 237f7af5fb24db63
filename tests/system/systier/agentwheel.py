"""Build the agent's wheel from this checkout and install it into the container's venv.

The wheel is built from a copy of `agent/` so the checkout gets no build/ or egg-info debris, and
a SOURCE_COMMIT file is added to the copy the way the Nix build adds it, so the installed agent
reports which commit it came from. The venv in the rootfs already holds the pinned runtime
dependencies; installing resolves only against those (`--no-index`), never the network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .container import Container
from .rootfs import VENV_DIR, WHEEL_DIR

REPO_ROOT = Path(__file__).resolve().parents[3]
AGENT_SRC = REPO_ROOT / "agent"


class WheelError(RuntimeError):
    pass


def source_commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], check=False, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def build(dest: Path) -> tuple[Path, str]:
    """Build the wheel into `dest`; return its path and the commit it reports ("" outside git).

    Other work lands in the checkout while tests run, so the commit is the one taken here, not HEAD.
    """
    src = dest / "src"
    # several test modules share the session's exchange directory and build into the same place
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(AGENT_SRC, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__"))
    commit = source_commit()
    if commit:
        (src / "nixfleet_agent" / "SOURCE_COMMIT").write_text(commit + "\n")
    out = dest / "wheel"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    wheels = sorted(out.glob("nixfleet_agent-*.whl")) if out.is_dir() else []
    if done.returncode != 0 or not wheels:
        raise WheelError(f"building the agent wheel failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wheels[0], commit


def install(box: Container, wheel_inside: str) -> None:
    """Install the wheel (a path inside the container) into the venv, dependencies from the rootfs."""
    box.run(f"{VENV_DIR}/bin/pip", "install", "--quiet", "--no-index", "--find-links", WHEEL_DIR,
            "--force-reinstall", "--no-deps", wheel_inside, timeout=120)
    # Dependencies the wheel declares must already be in the venv; pip check says which are not.
    box.run(f"{VENV_DIR}/bin/pip", "check", timeout=60)

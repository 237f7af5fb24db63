"""The README's entry points (dev/*, .ci/run) stay shellcheck-clean, and the suite's PATH names the agent.

Why the PATH check: with the agent installed in a virtualenv whose bin/ is not on PATH (Debian's
externally managed Python), ``check-version`` and the restart decision found no ``nixfleet-agent``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / "dev" / name for name in ("test", "demo", "dashboard", "fresh-debian")] + [ROOT / ".ci" / "run"]


def test_dev_scripts_are_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (dev/test installs it)")
    proc = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_suite_path_starts_with_the_agents_scripts_dir() -> None:
    python = subprocess.run([str(ROOT / "dev" / "test"), "--print-python"], capture_output=True, text=True, check=True)
    interpreter = python.stdout.strip()
    probe = subprocess.run([interpreter, "-c", "import importlib.metadata as m; m.distribution('nixfleet-agent')"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"the agent is not installed for {interpreter} (dev/test installs it)")
    out = subprocess.run([str(ROOT / "dev" / "test"), "--print-path"], capture_output=True, text=True, check=True)
    first = out.stdout.strip().split(os.pathsep)[0]
    assert os.access(Path(first) / "nixfleet-agent", os.X_OK), out.stdout

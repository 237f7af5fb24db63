"""The checks nixpkgs' test driver runs on a VM test's script before any VM starts, reproduced.

`nixos/lib/testing/driver.nix` builds the driver derivation of every `runNixOSTest` with
`skipTypeCheck` and `skipLint` false by default, and that build fails (so the `checks.*.vm-*`
attribute fails, with no VM ever booted) when either of these reports anything:

- mypy --no-implicit-optional --pretty --no-color-output testScriptWithTypes, where that file is
  the driver's typed globals, then one line `<node>: QemuMachine;` for every node (named as the
  driver names them), an empty line for containers, a line `vlan<n>: VLan` per VLAN, then the
  test script verbatim. Everything at module level is checked, so a `re.search(...).group(0)`
  there is an error (`union-attr`); bodies of unannotated functions are not (mypy's default).
- pyflakes over the bare script, with PYFLAKES_BUILTINS the node names and the driver's symbols:
  any message at all (an undefined name, an unused import or variable, a needless f-string)
  fails the build; none is ignored.

The driver's typed globals are tests/system/vm_driver/globals.py against the stub
tests/system/vm_driver/nixos_driver_api.pyi, our own rendering of the driver's API, so this runs
without nixpkgs. Messages keep the driver's wording and are followed by the file and line in
nixos-tests/ they come from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STUBS = Path(__file__).resolve().parent / "vm_driver"
GLOBALS = STUBS / "globals.py"
TYPED_NAME = "testScriptWithTypes"

MYPY_FLAGS = ["--no-implicit-optional", "--pretty", "--no-color-output"]
# The driver's python3 (nixpkgs' default since 25.05); the stub's and typeshed's view of the stdlib.
PYTHON_VERSION = "3.13"
# Driver.test_symbols() of a driver without machines: what `generate-driver-symbols` writes.
DRIVER_SYMBOLS = (
    "start_all", "test_script", "machines_qemu", "machines_nspawn", "vlans", "driver", "log", "os",
    "create_machine", "subtest", "run_tests", "join_all", "retry", "serial_stdout_off",
    "serial_stdout_on", "polling_condition", "BaseMachine", "t", "debug",
)


def pythonize(name: str) -> str:
    """A node name as a Python identifier, as the driver makes it (`foo-bar` is `foo_bar`)."""
    return re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)


def machine_names(nodes: list[str]) -> list[str]:
    """The globals that hold the nodes; a test's only node is also `machine`."""
    names = [pythonize(node) for node in nodes]
    if len(nodes) == 1 and "machine" not in nodes:
        names.append("machine")
    return names


@dataclass(frozen=True)
class Source:
    """Where the lines of an assembled test script come from (first line 1)."""

    parts: tuple[tuple[str, int], ...]  # (file name, number of lines), in order

    def locate(self, line: int) -> str:
        for name, count in self.parts:
            if line <= count:
                return f"{name}:{line}"
            line -= count
        return f"<after the script>:{line}"


def typed_script(script: str, nodes: list[str], vlans: list[int]) -> tuple[str, int]:
    """What the driver hands mypy, and how many lines precede `script` in it."""
    globals_text = GLOBALS.read_text()
    hints = [
        " ".join(f"{name}: QemuMachine;" for name in machine_names(nodes)),
        "",  # containers: none in these tests
        "\n".join(f"vlan{n}: VLan" for n in vlans),
    ]
    preamble = globals_text + "".join(f"{hint}\n" for hint in hints)
    return preamble + script, preamble.count("\n")


def run_mypy(
    script: str, nodes: list[str], vlans: list[int], source: Source, workdir: Path, extra: tuple[str, ...] = ()
) -> tuple[int, str]:
    """mypy as the driver runs it (plus `extra` flags), in a directory of its own: (exit status,
    annotated report)."""
    text, offset = typed_script(script, nodes, vlans)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / TYPED_NAME).write_text(text)
    env = {
        **os.environ,
        "MYPYPATH": str(STUBS),
        # no user configuration, as in the build sandbox
        "HOME": str(workdir),
        "XDG_CONFIG_HOME": str(workdir / ".config"),
    }
    env.pop("MYPY_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", *MYPY_FLAGS, *extra, "--python-version", PYTHON_VERSION,
         "--cache-dir", str(workdir.parent / ".mypy_cache"), TYPED_NAME],
        cwd=workdir, env=env, check=False, capture_output=True, text=True, timeout=300,
    )

    def where(match: re.Match[str]) -> str:
        line = int(match.group(2))
        origin = "the driver's globals" if line <= offset else source.locate(line - offset)
        return f"{match.group(0)} [{origin}]"

    report = re.sub(rf"^({TYPED_NAME}):(\d+):", where, done.stdout + done.stderr, flags=re.M)
    return done.returncode, report


def run_pyflakes(script: str, nodes: list[str], source: Source, workdir: Path) -> tuple[int, str]:
    """pyflakes as the driver runs it on the bare script: (exit status, annotated report)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "test-script"
    path.write_text(script)
    builtins = ",".join([*machine_names(nodes), *DRIVER_SYMBOLS])
    done = subprocess.run(
        [sys.executable, "-m", "pyflakes", str(path)],
        env={**os.environ, "PYFLAKES_BUILTINS": builtins},
        check=False, capture_output=True, text=True, timeout=120,
    )
    report = re.sub(
        rf"^{re.escape(str(path))}:(\d+):",
        lambda m: f"test-script:{m.group(1)}: [{source.locate(int(m.group(1)))}]",
        done.stdout + done.stderr,
        flags=re.M,
    )
    return done.returncode, report

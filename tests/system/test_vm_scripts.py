"""Lint of the NixOS VM tests (nixos-tests/): they cannot run here (no nixpkgs, no KVM), so check
what can be checked before a user runs `nix flake check`: every .nix parses, default.nix evaluates
(with a stand-in for `pkgs.testers.runNixOSTest` that returns what it was given), every test's
script is a .py file that compiles and names only the NixOS test driver's API and its own nodes."""

from __future__ import annotations

import ast
import builtins
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NIXOS_TESTS = Path(__file__).resolve().parents[2] / "nixos-tests"
HELPERS = "driver_helpers.py"

# Globals the NixOS test driver puts in a test script's namespace (nixos/lib/test-driver).
DRIVER_GLOBALS = {
    "start_all", "join_all", "subtest", "retry", "log", "machines", "driver", "polling_condition",
    "serial_stdout_on", "serial_stdout_off", "create_machine", "t", "os",
}
# Methods of the driver's Machine objects.
MACHINE_METHODS = {
    "start", "shutdown", "crash", "reboot", "block", "unblock", "succeed", "fail", "execute",
    "wait_for_unit", "wait_until_succeeds", "wait_until_fails", "wait_for_open_port",
    "wait_for_closed_port", "wait_for_file", "wait_for_console_text", "wait_for_shutdown",
    "wait_for_open_unix_socket", "systemctl", "require_unit_state", "get_unit_info",
    "get_unit_property", "copy_from_host", "copy_from_host_via_shell", "copy_from_vm",
    "sleep", "forward_port", "send_chars", "send_key", "screenshot", "switch_root", "name",
    "log", "nested", "dump_tty_contents", "console_interact", "send_monitor_command",
}

STUB_PKGS = """
{ testers.runNixOSTest = t: {
    name = t.name;
    nodes = builtins.attrNames t.nodes;
    testScript = t.testScript;
  };
}
"""

needs_nix = pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-instantiate not installed")


def nix_files() -> list[Path]:
    return sorted(NIXOS_TESTS.rglob("*.nix"))


def script_files() -> list[Path]:
    return sorted(NIXOS_TESTS.glob("*.py"))


@pytest.fixture(scope="module")
def evaluated() -> dict[str, dict[str, object]]:
    """default.nix evaluated with the stand-in runNixOSTest and a flake `self` with lazy stubs."""
    expr = (
        f"let tests = import {NIXOS_TESTS / 'default.nix'} {{ pkgs = {STUB_PKGS}; "
        "self = { outPath = ./.; inputs.home-manager.nixosModules.home-manager = { }; "
        "nixosModules = { }; homeManagerModules = { }; packages = { }; }; }; "
        "in builtins.mapAttrs (n: t: t) tests"
    )
    done = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"nixos-tests/default.nix does not evaluate:\n{done.stderr}"
    result: dict[str, dict[str, object]] = json.loads(done.stdout)
    return result


def test_there_are_vm_tests() -> None:
    assert (NIXOS_TESTS / "default.nix").is_file()
    assert script_files(), "no test scripts in nixos-tests/"


@needs_nix
@pytest.mark.parametrize("path", nix_files(), ids=lambda p: p.name)
def test_nix_file_parses(path: Path) -> None:
    done = subprocess.run(["nix-instantiate", "--parse", str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{path.name} does not parse:\n{done.stderr}"


@needs_nix
def test_every_script_belongs_to_a_test(evaluated: dict[str, dict[str, object]]) -> None:
    """Each test runs the shared helpers followed by exactly one script file, and each file is used."""
    helpers = (NIXOS_TESTS / HELPERS).read_text()
    scripts = {path.read_text(): path.name for path in script_files() if path.name != HELPERS}
    used = set()
    for name, test in evaluated.items():
        text = str(test["testScript"])
        assert text.startswith(helpers), f"{name}: script does not start with {HELPERS}"
        assert text[len(helpers):] in scripts, f"{name}: script is not one nixos-tests/*.py file verbatim"
        used.add(scripts[text[len(helpers):]])
    assert used == set(scripts.values()), f"unused scripts: {set(scripts.values()) - used}"


@needs_nix
def test_scripts_name_only_driver_api_and_their_nodes(evaluated: dict[str, dict[str, object]]) -> None:
    problems: list[str] = []
    for name, test in evaluated.items():
        listed = test["nodes"]
        assert isinstance(listed, list)
        nodes = {str(node) for node in listed}
        problems += [f"{name}: {p}" for p in driver_api_problems(str(test["testScript"]), nodes)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", script_files(), ids=lambda p: p.name)
def test_script_compiles(path: Path) -> None:
    compile(path.read_text(), str(path), "exec")


def driver_api_problems(source: str, nodes: set[str]) -> list[str]:
    """Free names outside the driver's globals, builtins, imports and the test's nodes; and
    methods called on a node that the driver's Machine does not have."""
    tree = ast.parse(source)
    bound = set(dir(builtins)) | DRIVER_GLOBALS | nodes
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
            problems.append(f"line {node.lineno}: unknown name {node.id!r}")
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in nodes
            and node.attr not in MACHINE_METHODS
        ):
            problems.append(f"line {node.lineno}: {node.value.id}.{node.attr} is not a test driver Machine method")
    return problems


def test_lint_catches_unknown_names_and_methods() -> None:
    """The lint above must be able to fail, or it proves nothing about the scripts."""
    bad = "start_all()\nagent.wait_for_unti('x')\nundefined_helper()\n"
    problems = driver_api_problems(bad, {"agent"})
    assert any("wait_for_unti" in p for p in problems)
    assert any("undefined_helper" in p for p in problems)
    good = "import json\nstart_all()\nwith subtest('x'):\n    out = json.loads(agent.succeed('cat f'))\n"
    assert driver_api_problems(good, {"agent"}) == []


# ---------------------------------------------------------------------------- node configurations

REPO = NIXOS_TESTS.parent
NODES_SPEC = Path(__file__).resolve().parent / "vm_specs" / "nodes.nix"


def harness() -> Path:
    """The shared nix-harness and its prepared sources, or skip saying what is missing."""
    if shutil.which("nix-instantiate") is None:
        pytest.skip("nix-instantiate not installed")
    exe_dir = Path(os.environ.get("NIX_HARNESS") or REPO.parent / "shared" / "tools" / "nix-harness")
    if not (exe_dir / "lib" / "nixos.nix").is_file():
        pytest.skip(f"nix-harness not found at {exe_dir} (set NIX_HARNESS)")
    src = Path(os.environ.get("HARNESS_SRC") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
               / "nix-harness" / "src")
    if not (src / "nixpkgs-nixos" / "nixos" / "modules" / "system" / "boot" / "systemd.nix").is_file():
        pytest.skip(f"nix-harness sources not prepared in {src} (`nix-harness prepare`)")
    return exe_dir


@pytest.fixture(scope="module", params=["server", "agent"])
def node(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    exe_dir = harness()
    done = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode", "-I", f"nix-harness={exe_dir}",
         "--argstr", "node", request.param, "--arg", "repo", str(REPO), str(NODES_SPEC)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"the VM tests' {request.param} node does not evaluate:\n{done.stderr[-3000:]}"
    return request.param, json.loads(done.stdout)


def test_vm_node_evaluates_against_the_modules(node: tuple[str, dict[str, object]]) -> None:
    """The option names, types and assertions the VM tests rely on hold for the current modules."""
    name, report = node
    assert report["failedAssertions"] == []
    units: dict[str, dict[str, str]] = report["units"]  # type: ignore[assignment]
    if name == "server":
        assert "-dashboard.py --listen 0.0.0.0 --port 8000" in units["nixfleet-dashboard.service"]["text"]
        assert "git daemon" in units["fleet-git.service"]["text"]
        return
    agent = units["nixfleet-agent.service"]["text"]
    assert "LoadCredential=token:/run/nixfleet/token" in agent
    assert "DynamicUser=true" in agent
    privileged = units["nixfleet-agent-privileged.service"]["text"]
    assert "--nixos-rebuild /nix/store/" in privileged and "-nixos-rebuild-" in privileged

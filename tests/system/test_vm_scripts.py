"""Checks of the NixOS VM tests (nixos-tests/): they cannot run here (no nixpkgs, no KVM), so check
what can be checked before a user runs `nix flake check`: every .nix parses, default.nix evaluates
(with a stand-in for `pkgs.testers.runNixOSTest` that returns what it was given), every test's
script is a .py file that compiles, and each script passes the type check (mypy) and lint
(pyflakes) that the NixOS test driver's build runs on it before any VM starts (vm_typecheck.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import vm_typecheck

NIXOS_TESTS = Path(__file__).resolve().parents[2] / "nixos-tests"
HELPERS = "driver_helpers.py"

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


@pytest.mark.parametrize("path", script_files(), ids=lambda p: p.name)
def test_script_compiles(path: Path) -> None:
    compile(path.read_text(), str(path), "exec")


# ------------------------------------------------------------- the driver's type check and lint

def require(module: str) -> None:
    """mypy and pyflakes are test dependencies (./dev/test installs them): missing is a failure,
    or a green run would say nothing about what `nix flake check` does to the scripts."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed; ./dev/test installs it (PIP_PACKAGES)", pytrace=False)


def vm_test_of(script: Path, evaluated: dict[str, dict[str, object]]) -> tuple[str, list[str], str]:
    """(test attribute, its nodes, its whole testScript) of the test that runs `script`."""
    text = script.read_text()
    for name, test in evaluated.items():
        if str(test["testScript"]).endswith(text):
            listed = test["nodes"]
            assert isinstance(listed, list)
            return name, [str(node) for node in listed], str(test["testScript"])
    raise AssertionError(f"no test in nixos-tests/default.nix runs {script.name}")


def source_of(script_name: str) -> vm_typecheck.Source:
    helpers = (NIXOS_TESTS / HELPERS).read_text()
    lines = (NIXOS_TESTS / script_name).read_text().count("\n") + 1
    return vm_typecheck.Source(((f"nixos-tests/{HELPERS}", helpers.count("\n")), (f"nixos-tests/{script_name}", lines)))


# No node sets virtualisation.vlans, so every node is on VLAN 1, the driver's default.
VLANS = [1]

test_scripts = [path for path in script_files() if path.name != HELPERS]


@pytest.fixture(scope="module")
def checks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the module's mypy runs: they share mypy's cache (.mypy_cache in it)."""
    return tmp_path_factory.mktemp("vm-checks")


def test_nodes_keep_the_default_vlan() -> None:
    assert not [p.name for p in nix_files() if "vlans" in p.read_text()], "update VLANS for virtualisation.vlans"


@needs_nix
@pytest.mark.parametrize("path", test_scripts, ids=lambda p: p.name)
def test_script_type_checks_as_the_driver_does(
    path: Path, evaluated: dict[str, dict[str, object]], checks_dir: Path
) -> None:
    """What the test driver's build runs before a VM starts (vm_typecheck's docstring): it fails
    `nix flake check` on a mistake no run here would otherwise show."""
    require("mypy")
    name, nodes, script = vm_test_of(path, evaluated)
    status, report = vm_typecheck.run_mypy(
        script, nodes, VLANS, source_of(path.name), checks_dir / name
    )
    assert status == 0, f"{name}: the test driver's type check fails:\n{report}"


@needs_nix
@pytest.mark.parametrize("path", test_scripts, ids=lambda p: p.name)
def test_script_bodies_type_check(
    path: Path, evaluated: dict[str, dict[str, object]], checks_dir: Path
) -> None:
    """Stricter than the driver: the bodies of the scripts' unannotated helpers too, so a typo in
    `def start_dashboard(...)` fails here rather than in a booted VM."""
    require("mypy")
    name, nodes, script = vm_test_of(path, evaluated)
    status, report = vm_typecheck.run_mypy(
        script, nodes, VLANS, source_of(path.name), checks_dir / f"{name}-bodies", ("--check-untyped-defs",)
    )
    assert status == 0, f"{name}: mypy --check-untyped-defs fails:\n{report}"


@needs_nix
@pytest.mark.parametrize("path", test_scripts, ids=lambda p: p.name)
def test_script_lints_as_the_driver_does(
    path: Path, evaluated: dict[str, dict[str, object]], checks_dir: Path
) -> None:
    require("pyflakes")
    name, nodes, script = vm_test_of(path, evaluated)
    status, report = vm_typecheck.run_pyflakes(script, nodes, source_of(path.name), checks_dir / f"{name}-flakes")
    assert status == 0, f"{name}: the test driver's lint (pyflakes) fails:\n{report}"


BAD_SCRIPTS = {
    # the mistake the driver found in switch.py: a possibly-None match used at module level
    "union-attr": 'import re\nout = agent.succeed("x")\nprint(re.search("a", out).group(0))\n',
    "attr-defined": 'agent.wait_for_unti("nixfleet-agent.service")\n',
    "arg-type": "server.wait_for_open_port('8000')\n",
    # execute gives (status, output), not the output
    "tuple": 'agent.execute("true").strip()\n',
    "subtest": 'with subtest(1):\n    pass\n',
}


@pytest.mark.parametrize("code", sorted(BAD_SCRIPTS))
def test_type_check_catches_driver_api_misuse(code: str, checks_dir: Path) -> None:
    """The type check must be able to fail, or its passing says nothing."""
    require("mypy")
    script = BAD_SCRIPTS[code]
    source = vm_typecheck.Source((("bad.py", script.count("\n")),))
    status, report = vm_typecheck.run_mypy(script, ["agent", "server"], VLANS, source, checks_dir / f"bad-{code}")
    assert status == 1, report
    assert "[bad.py:" in report, report


def test_type_check_accepts_the_driver_api(checks_dir: Path) -> None:
    require("mypy")
    script = (
        "import re\nstart_all()\nwith subtest('x'):\n"
        "    status, out = agent.execute('true')\n    found = re.search('a', agent.succeed('x'))\n"
        "    assert found is not None\n    print(found.group(0), status + 1, out.strip())\n"
        "    agent.wait_for_unit('u', 'alice', timeout=5)\n    server.wait_for_open_port(8000)\n"
        "retry(lambda last: True)\nmachine.wait_until_succeeds('true', timeout=3).strip()\n"
    )
    source = vm_typecheck.Source((("good.py", script.count("\n")),))
    status, report = vm_typecheck.run_mypy(script, ["agent"], VLANS, source, checks_dir / "good-no-server")
    assert status == 1 and "server" in report, "a node the test does not have must be an error"
    status, report = vm_typecheck.run_mypy(script.replace("server", "agent"), ["agent"], VLANS, source, checks_dir / "good")
    assert status == 0, report


def test_lint_reports_what_the_driver_rejects(tmp_path: Path) -> None:
    require("pyflakes")
    for bad in ("undefined_helper()\n", "import json\n", "agent.succeed(f'x')\n", "machines[0].start()\n"):
        source = vm_typecheck.Source((("bad.py", 1),))
        status, report = vm_typecheck.run_pyflakes(bad, ["agent", "server"], source, tmp_path)
        assert status == 1 and "[bad.py:1]" in report, (bad, report)
    good = "import json\nstart_all()\nprint(os.getcwd(), json.dumps(1))\nmachine.succeed('true')\n"
    status, report = vm_typecheck.run_pyflakes(good, ["agent"], vm_typecheck.Source((("good.py", 4),)), tmp_path)
    assert status == 0, report


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

"""The flake as consumers see it: parseable Nix everywhere, a nixpkgs-only lock pinned to a
known-good nixos-unstable, check-only inputs kept in ./checks, and the promised outputs.

Nothing can be built here (no nixpkgs); output names are evaluated against the nix-harness'
offline fake nixpkgs where it exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nix_harness_support import REPO, harness_dir, parse_unit, require_harness, run, sources_dir

NIXPKGS_PIN = {
    "lastModified": 1765779637,
    "narHash": "sha256-KJ2wa/BLSrTqDjbfyNx70ov/HdgNBCBBSQP3BIzKnv4=",
    "owner": "NixOS",
    "repo": "nixpkgs",
    "rev": "1306659b587dc277866c7b69eb97e5f07864d8c4",
    "type": "github",
}
SYSTEMS = ["aarch64-darwin", "aarch64-linux", "x86_64-darwin", "x86_64-linux"]
NIX = ["nix", "--extra-experimental-features", "nix-command flakes"]


def nix_files() -> list[Path]:
    proc = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard",
                           "*.nix"], capture_output=True, text=True, check=True)
    return [REPO / line for line in proc.stdout.splitlines() if (REPO / line).is_file()]


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt install nix-bin)")


def test_every_nix_file_parses() -> None:
    require("nix-instantiate")
    files = nix_files()
    assert REPO / "flake.nix" in files and REPO / "modules" / "nixos.nix" in files
    for path in files:
        proc = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.relative_to(REPO)}: {proc.stderr}"


def load_lock(path: Path) -> dict[str, object]:
    text = path.read_text()
    lock = json.loads(text)
    # byte for byte what Nix writes, so `nix flake lock` leaves it unchanged
    assert text == json.dumps(lock, indent=2, sort_keys=True) + "\n"
    assert lock["version"] == 7 and lock["root"] == "root"
    return lock


def test_lock_pins_only_nixpkgs() -> None:
    lock = load_lock(REPO / "flake.lock")
    nodes = lock["nodes"]
    assert isinstance(nodes, dict)
    assert set(nodes) == {"root", "nixpkgs"}
    assert nodes["root"] == {"inputs": {"nixpkgs": "nixpkgs"}}
    assert nodes["nixpkgs"]["locked"] == NIXPKGS_PIN
    assert nodes["nixpkgs"]["original"] == {"owner": "NixOS", "ref": "nixos-unstable", "repo": "nixpkgs",
                                            "type": "github"}


def test_check_inputs_live_in_the_sub_flake() -> None:
    lock = load_lock(REPO / "checks" / "flake.lock")
    nodes = lock["nodes"]
    assert isinstance(nodes, dict)
    assert set(nodes["root"]["inputs"]) == {"nixpkgs", "home-manager", "nix-darwin"}
    assert nodes["nixpkgs"]["locked"] == NIXPKGS_PIN  # one nixpkgs for checks and consumers
    for name, owner in (("home-manager", "nix-community"), ("nix-darwin", "nix-darwin")):
        node = nodes[name]
        assert node["inputs"] == {"nixpkgs": ["nixpkgs"]}  # follows, no second nixpkgs
        assert node["locked"]["owner"] == owner and node["locked"]["type"] == "github"
        assert len(node["locked"]["rev"]) == 40 and node["locked"]["narHash"].startswith("sha256-")


def test_flake_declares_only_nixpkgs() -> None:
    require("nix-instantiate")
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                           f"(import {REPO / 'flake.nix'}).inputs"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-unstable"}}


@pytest.mark.parametrize("flake_dir", [".", "checks"])
def test_lock_files_are_current(tmp_path: Path, flake_dir: str) -> None:
    """Nix accepts each lock as up to date offline (a stale lock would need to fetch)."""
    require("nix")
    for name in ("flake.nix", "flake.lock"):
        shutil.copy(REPO / flake_dir / name, tmp_path / name)
    proc = subprocess.run([*NIX, "--offline", "flake", "metadata", "--json", "--no-update-lock-file",
                           f"path:{tmp_path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    locks = json.loads(proc.stdout)["locks"]["nodes"]
    assert locks["nixpkgs"]["locked"]["rev"] == NIXPKGS_PIN["rev"]


@pytest.fixture(scope="module")
def flake_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The checkout's files (as a flake would see them) and the harness' fake nixpkgs."""
    require("nix")
    require_harness()
    out = Path(os.environ.get("HARNESS_OUT") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
               / "nix-harness" / "out")
    fake = out / "fake-nixpkgs"
    if not (fake / "flake.nix").is_file():
        proc = subprocess.run([str(harness_dir() / "tools" / "make-fake-nixpkgs.sh")], capture_output=True, text=True,
                              env=dict(os.environ, HARNESS_OUT=str(out)), timeout=300)
        if proc.returncode != 0 or not (fake / "flake.nix").is_file():
            pytest.skip(f"could not create the harness' fake nixpkgs: {proc.stderr[-500:]}")
    copy = tmp_path_factory.mktemp("flake")
    files = nix_files() + [REPO / "flake.lock", REPO / "checks" / "flake.lock"]
    for path in files + list((REPO / "agent").rglob("VERSION")):
        target = copy / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    # a Git checkout, so the ./checks flake's source is the whole tree (as in the real repository)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.test", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.test")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", "-C", str(copy), *args], env=env, check=True, capture_output=True)
    return copy, fake


def flake_eval(flake: tuple[Path, Path], attr: str, apply: str, subflake: bool = False) -> object:
    copy, fake = flake
    ref = f"git+file://{copy}?dir=checks" if subflake else f"path:{copy}"
    overrides = ["--override-input", "nixpkgs", f"path:{fake}"]
    if subflake:
        src = sources_dir()
        overrides += ["--override-input", "home-manager", f"path:{src / 'nix-community+home-manager'}",
                      "--override-input", "nix-darwin", f"path:{src / 'nix-darwin+nix-darwin'}"]
    proc = subprocess.run([*NIX, "--offline", "eval", "--json", f"{ref}#{attr}", "--apply", apply, *overrides],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_outputs(flake_copy: tuple[Path, Path]) -> None:
    names = "builtins.attrNames"
    assert flake_eval(flake_copy, "packages", names) == SYSTEMS
    assert flake_eval(flake_copy, "packages.x86_64-linux", names) == ["default", "nixfleet-agent"]
    assert flake_eval(flake_copy, "packages.aarch64-darwin", names) == ["default", "nixfleet-agent"]
    assert flake_eval(flake_copy, "overlays", names) == ["default"]
    assert flake_eval(flake_copy, "nixosModules", names) == ["default", "nixfleet-agent"]
    assert flake_eval(flake_copy, "homeModules", names) == ["default", "nixfleet-agent"]
    assert flake_eval(flake_copy, "darwinModules", names) == ["default", "nixfleet-agent"]
    assert flake_eval(flake_copy, "homeManagerModules", names) == ["default", "nixfleet-agent"]
    assert flake_eval(flake_copy, "formatter", names) == SYSTEMS
    assert flake_eval(flake_copy, "devShells.x86_64-linux", names) == ["default"]
    checks = flake_eval(flake_copy, "checks.x86_64-linux", names)
    assert isinstance(checks, list) and {"nixfleet-agent", "nixos-module"} <= set(checks)
    assert flake_eval(flake_copy, "checks.aarch64-darwin", names) == ["nixfleet-agent"]


def test_checks_flake_adds_home_manager_checks(flake_copy: tuple[Path, Path]) -> None:
    """./checks imports the main flake from the same tree and adds what needs Home Manager."""
    linux = flake_eval(flake_copy, "checks.x86_64-linux", "builtins.attrNames", subflake=True)
    main = flake_eval(flake_copy, "checks.x86_64-linux", "builtins.attrNames")
    assert isinstance(linux, list) and isinstance(main, list)
    assert set(linux) - set(main) >= {"home-manager-module"}
    darwin = flake_eval(flake_copy, "checks.aarch64-darwin", "builtins.attrNames", subflake=True)
    assert darwin == ["home-manager-module", "nix-darwin-module", "nixfleet-agent"]


def test_modules_are_module_functions(flake_copy: tuple[Path, Path]) -> None:
    for output in ("nixosModules", "homeModules", "homeManagerModules", "darwinModules"):
        assert flake_eval(flake_copy, f"{output}.default", "builtins.isFunction") is True


def test_flake_show_lists_both_home_manager_names(flake_copy: tuple[Path, Path]) -> None:
    copy, fake = flake_copy
    proc = subprocess.run([*NIX, "--offline", "flake", "show", "--json", f"path:{copy}",
                           "--override-input", "nixpkgs", f"path:{fake}"], capture_output=True, text=True, timeout=120)
    if "attribute 'readFileType' missing" in proc.stderr:
        pytest.skip("`nix flake show` evaluates the package, whose lib.fileset needs builtins.readFileType "
                    "(Nix >= 2.14; this Nix is older); test_outputs checks the same names with `nix eval`")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert {"homeModules", "homeManagerModules", "nixosModules"} <= set(shown)


def test_flake_nixos_modules_import_together_and_default_to_the_flake_package(tmp_path: Path) -> None:
    proc = run("nixos", "flake-modules.nix", tmp_path)
    assert proc.returncode == 0, proc.stdout
    service = parse_unit((tmp_path / "units" / "nixfleet-agent.service").read_text())["Service"]
    assert "-flake-provided-agent-1/bin/nixfleet-agent --config " in service["ExecStart"][0]


def test_flake_home_manager_modules_import_together(tmp_path: Path) -> None:
    """homeModules.default and the alias homeManagerModules.nixfleet-agent together: one module
    (a second copy would declare every option twice)."""
    proc = run("hm", "flake-modules.nix", tmp_path, "--argstr", "kind", "hm", "--argstr", "system", "aarch64-darwin")
    assert proc.returncode == 0, proc.stdout
    assert "-flake-provided-agent-1/bin/nixfleet-agent" in (tmp_path / "launchd" / "com.nixfleet.agent.plist").read_text()


def test_flake_darwin_modules_import_together_and_default_to_the_flake_package(tmp_path: Path) -> None:
    proc = run("darwin", "flake-modules.nix", tmp_path, "--argstr", "kind", "darwin",
               "--argstr", "system", "aarch64-darwin")
    assert proc.returncode == 0, proc.stdout
    daemon = (tmp_path / "darwin" / "launchDaemons" / "com.nixfleet.agent.plist").read_text()
    assert "-flake-provided-agent-1/bin/nixfleet-agent --config " in daemon

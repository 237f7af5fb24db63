"""What packages/nixfleet-agent/package.nix tells nixpkgs, read by evaluating the file itself.

The check-phase tier must run exactly what the package runs, so it never keeps its own copy of
the test paths or dependencies: `nix-instantiate --eval` calls package.nix with a tiny stub `lib`
and `python3Packages` (only what the asked-for attributes touch; Nix is lazy, so `meta` never is).
`lib.fileset` cannot be evaluated by Nix 2.8 (no builtins.readFileType), so the stub records the
`unions`/`maybeMissing` members as plain paths; anything else in there fails the evaluation loudly.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE_NIX = REPO / "packages" / "nixfleet-agent" / "package.nix"

STUB = r"""
{ pkgFile, pyNames, pyVersion }:
let
  path = p: { path = toString p; };
  lib = {
    inherit (builtins) filter;
    trim = s: s;
    optionals = c: l: if c then l else [ ];
    escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
    fileset = {
      toSource = { root, fileset }: { root = toString root; inherit fileset; };
      unions = map (x: if builtins.isPath x then path x else x);
      maybeMissing = p: path p // { maybeMissing = true; };
    };
  };
  python3Packages =
    builtins.listToAttrs (map (n: { name = n; value = { python = n; }; }) pyNames)
    // {
      pythonOlder = v: builtins.compareVersions pyVersion v < 0;
      buildPythonApplication = attrs: attrs;
    };
  fn = import (/. + pkgFile);
  # every other package argument (git, openssl, openssh, ...) is a tool of the build
  tools = builtins.mapAttrs (name: _: { tool = name; }) (
    removeAttrs (builtins.functionArgs fn) [ "lib" "python3Packages" "sourceCommit" ]
  );
  pkg = fn (tools // { inherit lib python3Packages; });
in
{
  inherit (pkg) enabledTestPaths dependencies nativeCheckInputs build-system src sourceRoot preCheck postPatch pythonImportsCheck;
}
"""


class Unavailable(Exception):
    """The machine cannot provide something the tier needs (the test skips with this reason)."""


@dataclass(frozen=True)
class Package:
    test_paths: list[str]
    dependencies: list[str]  # python3Packages attribute names
    check_inputs: list[str]  # python3Packages attribute names
    check_tools: list[str]  # other nativeCheckInputs (git, openssl)
    build_system: list[str]
    fileset: list[tuple[Path, bool]]  # (path, maybeMissing)
    root: Path
    source_root: str
    pre_check: str
    post_patch: str
    imports_check: list[str]


def _names(items: list[dict[str, str]], what: str) -> tuple[list[str], list[str]]:
    py, tools = [], []
    for item in items:
        if "python" in item:
            py.append(item["python"])
        elif "tool" in item:
            tools.append(item["tool"])
        else:
            raise AssertionError(f"package.nix {what}: cannot read item {item!r}")
    return py, tools


def read_package(nix_file: Path = PACKAGE_NIX) -> Package:
    """Evaluate ``nix_file``; fail with the evaluator's message if it cannot be read."""
    nix = shutil.which("nix-instantiate")
    if nix is None:
        raise Unavailable("nix-instantiate (Debian: nix-bin) is needed to read package.nix")
    text = nix_file.read_text()
    py_names = sorted(set(re.findall(r"python3Packages\.([A-Za-z0-9_'-]+)", text)) - {"pythonOlder"})
    version = "%d.%d.%d" % sys.version_info[:3]
    proc = subprocess.run([nix, "--eval", "--strict", "--json", "--expr", STUB,
                           "--argstr", "pkgFile", str(nix_file), "--argstr", "pyVersion", version,
                           "--arg", "pyNames", "[ " + " ".join(json.dumps(n) for n in py_names) + " ]"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        errors = [l for l in proc.stderr.splitlines() if "build-users-group" not in l]
        raise AssertionError(f"cannot evaluate {nix_file.name}:\n" + "\n".join(errors))
    raw = json.loads(proc.stdout)
    deps, dep_tools = _names(raw["dependencies"], "dependencies")
    check, tools = _names(raw["nativeCheckInputs"], "nativeCheckInputs")
    build, _ = _names(raw["build-system"], "build-system")
    fileset = [(Path(m["path"]), bool(m.get("maybeMissing"))) for m in raw["src"]["fileset"]]
    pkg = Package(raw["enabledTestPaths"], deps, check, tools + dep_tools, build, fileset, Path(raw["src"]["root"]),
                  raw["sourceRoot"], raw["preCheck"], raw["postPatch"], raw["pythonImportsCheck"])
    for field in ("test_paths", "dependencies", "build_system", "fileset", "imports_check"):
        if not getattr(pkg, field):
            raise AssertionError(f"{nix_file.name}: found no {field}: the tier would test nothing")
    if "pytestCheckHook" not in pkg.check_inputs:
        raise AssertionError(f"{nix_file.name}: nativeCheckInputs has no pytestCheckHook")
    return pkg


def tracked_files(root: Path) -> list[Path] | None:
    """The files a flake build sees: git's tracked (or staged) files, with working-tree contents."""
    proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached"], capture_output=True)
    if proc.returncode != 0:
        return None
    return [root / name for name in proc.stdout.decode().split("\0") if name and (root / name).is_file()]


def copy_fileset(pkg: Package, dest: Path) -> list[str]:
    """Copy exactly the files the package's ``lib.fileset`` selects to ``dest``; return them (relative)."""
    tracked = tracked_files(pkg.root)
    if tracked is None:  # a tarball, not a checkout: everything but bytecode
        tracked = [p for p in pkg.root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    chosen: list[str] = []
    for member, maybe_missing in pkg.fileset:
        if not member.exists():
            if maybe_missing:
                continue
            raise AssertionError(f"package.nix fileset: {member} does not exist")
        for path in tracked:
            if path == member or member in path.parents:
                chosen.append(str(path.relative_to(pkg.root)))
    if not chosen:
        raise AssertionError("package.nix fileset selects no files")
    for rel in sorted(set(chosen)):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pkg.root / rel, target)
    return sorted(set(chosen))

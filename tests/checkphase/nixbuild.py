"""nixpkgs' Python build, reproduced: unpack, postPatch, PEP 517 wheel, install, import check, pytest.

Mirrors buildPythonApplication with pyproject = true: the fileset is copied to a read-only "store"
dir, unpacked to a writable build dir, built with `python -m build --no-isolation --wheel` (pypaBuildHook),
installed with `pip --prefix` (pypaInstallHook), then pythonImportsCheck (`cd $out`) and pytestCheckHook
(`python -m pytest <enabledTestPaths>` after preCheck) run against the now read-only tree. Every step
runs with a bare interpreter (a venv without site-packages, so nothing this machine has installed is
visible), PYTHONPATH = <out>/site-packages : <dependencies>, PATH = git, openssl and stdenv's basics,
as `nobody` in a network namespace with only loopback up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from package_nix import Package, Unavailable, copy_fileset

# python3Packages attribute -> PyPI requirement. pytest is pinned to the oldest nixpkgs we support
# (nixos-25.05 ships pytest 8.3.x), so tests that only collect on newer pytest fail here.
PYPI = {
    "pytestCheckHook": "pytest==8.3.5",
    "hypothesis": "hypothesis",
    "websockets": "websockets",
    "websocket-client": "websocket-client",
    "prometheus-client": "prometheus_client",
    "setuptools": "setuptools",
    "tomli": "tomli",
}
BUILD_FRONTEND = ["build"]  # pypaBuildHook's frontend

# stdenv's PATH besides the package's nativeCheckInputs tools
STDENV_TOOLS = ("sh", "bash", "env", "cat", "cp", "mv", "rm", "ln", "ls", "mkdir", "rmdir", "chmod", "touch",
                "echo", "printf", "true", "false", "sleep", "test", "[", "head", "tail", "wc", "sort", "uniq",
                "cut", "tr", "tee", "id", "uname", "date", "basename", "dirname", "readlink", "realpath",
                "mktemp", "stat", "kill", "seq", "yes", "expr", "nproc", "od", "base64", "sha256sum", "md5sum",
                "timeout", "pwd", "whoami", "du", "df", "install", "truncate", "dd", "tac", "comm", "paste",
                "join", "fold", "split", "sync", "nohup", "chown", "sed", "grep", "awk", "find", "xargs", "diff", "cmp", "tar", "gzip")
NOBODY = 65534


def pypi_names(names: Sequence[str]) -> list[str]:
    missing = [n for n in names if n not in PYPI]
    if missing:
        raise AssertionError(f"no PyPI name for python3Packages.{missing[0]}: add it to PYPI in {__file__}")
    return [PYPI[n] for n in names]


def bare_python(work: Path) -> Path:
    """A venv without pip or site-packages on an interpreter `nobody` can run (a venv or pyenv under
    a 0700 home cannot be): the closest to nixpkgs' python3, which has no packages of its own."""
    candidates = [getattr(sys, "_base_executable", ""), sys.executable, "/usr/bin/python3"]
    for candidate in dict.fromkeys(c for c in candidates if c):
        probe = subprocess.run(as_nobody([candidate, "-I", "-c", "import sys, json; print(sys.prefix); "
                                          "assert sys.version_info >= (3, 11)"]), capture_output=True, text=True)
        real = subprocess.run([candidate, "-I", "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout == real.stdout:
            venv = work / "python"
            subprocess.run([candidate, "-m", "venv", "--without-pip", str(venv)], check=True)
            python = venv / "bin" / "python"
            seen = subprocess.run([str(python), "-c", "import websockets"], capture_output=True, env={})
            assert seen.returncode != 0, f"{python} sees this machine's websockets: not a bare interpreter"
            return python
    raise Unavailable("no Python >= 3.11 that an unprivileged user can run (checked: " + ", ".join(candidates) + ")")


def as_nobody(argv: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(argv)
    return [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]


def sandboxed(argv: Sequence[str]) -> list[str]:
    """``argv`` as a non-root user with no network but loopback (nixpkgs' sandbox has lo)."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    if os.geteuid() == 0:
        if not (shutil.which("unshare") and shutil.which("setpriv") and os.path.exists(ip)):
            raise Unavailable("unshare, setpriv (util-linux) and ip (iproute2) are needed")
        return [shutil.which("unshare") or "unshare", "--net", "--", "/bin/sh", "-c", f'"{ip}" link set lo up && exec "$@"', "sh", *as_nobody(argv)]
    if not shutil.which("unshare"):
        raise Unavailable("unshare (util-linux) is needed")
    probe = subprocess.run(["unshare", "--user", "--map-current-user", "--net", ip, "link", "set", "lo", "up"],
                           capture_output=True)
    if probe.returncode != 0:
        # e.g. inside a container whose capability bounding set lacks CAP_NET_ADMIN (dev/fresh-debian)
        raise Unavailable("cannot make a network namespace with loopback up without root (unshare --user --net "
                          f"+ ip link set lo up: {probe.stderr.decode().strip()})")
    return [shutil.which("unshare") or "unshare", "--user", "--map-current-user", "--net", "--", "/bin/sh", "-c",
            f'"{ip}" link set lo up && exec "$@"', "sh", *argv]


def cached_target(requirements: Sequence[str]) -> Path:
    """``pip install --target`` of ``requirements``, cached by the list (PyPI is reachable on CI)."""
    key = hashlib.sha256("\n".join(sorted(requirements) + [sys.version.split()[0]]).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nixfleet-agent-tests"
    target = base / f"deps-{key}"
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               "--no-warn-script-location", "--target", str(target), *requirements],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"pip install {' '.join(requirements)} failed:\n{proc.stdout}{proc.stderr}"
        (target / ".complete").write_text("\n".join(requirements) + "\n")
    return target


# the executables a nixpkgs package puts on PATH, where they are not named like the package
PACKAGE_BINS = {"openssh": ("ssh", "ssh-keygen", "sshd")}


def stdenv_path(bin_dir: Path, tools: Sequence[str]) -> str:
    bin_dir.mkdir()
    for name in STDENV_TOOLS:
        found = shutil.which(name)
        if found:
            (bin_dir / name).symlink_to(found)
    for package in tools:
        for name in PACKAGE_BINS.get(package, (package,)):
            found = shutil.which(name)
            if found is None and package not in PACKAGE_BINS:
                raise Unavailable(f"{name} (from nativeCheckInputs {package}) is not installed")
            if found is not None and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def run(argv: Sequence[str], *, cwd: Path, env: dict[str, str], what: str, timeout: float = 900) -> str:
    proc = subprocess.run(sandboxed(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(out.splitlines()[-60:]))
    return out


def check_phase(pkg: Package) -> tuple[str, dict[str, float]]:
    """Run the whole build; return the inner pytest output and per-phase timings. Raises on failure."""
    import time

    times: dict[str, float] = {}
    start = time.monotonic()
    deps = cached_target(pypi_names([*pkg.dependencies, *pkg.check_inputs]))
    build_deps = cached_target(pypi_names(pkg.build_system) + BUILD_FRONTEND)
    times["pip (cached after first run)"] = time.monotonic() - start
    work = Path(tempfile.mkdtemp(prefix="nixfleet-checkphase-"))
    try:
        work.chmod(0o755)
        mark = time.monotonic()
        store = work / "store" / "source"
        copy_fileset(pkg, store)
        subprocess.run(["chmod", "-R", "a-w", str(store)], check=True)
        # nobody cannot read root's cache: the dependencies go where the sandbox can see them
        shutil.copytree(deps, work / "deps", symlinks=True)
        shutil.copytree(build_deps, work / "build-deps", symlinks=True)
        python = bare_python(work)
        build_top = work / "build"
        tmp = build_top / "tmp"
        tmp.mkdir(parents=True)
        shutil.copytree(store, build_top / "source")  # unpackPhase: a writable copy
        subprocess.run(["chmod", "-R", "u+w", str(build_top)], check=True)
        out = work / "out"
        out.mkdir()
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(build_top)], check=True)
        src = build_top / pkg.source_root
        # the build's interpreter is on PATH in nixpkgs too (python3 and python)
        env = {"PATH": f"{python.parent}:{stdenv_path(work / 'bin', pkg.check_tools)}", "HOME": "/homeless-shelter",
               "TMPDIR": str(tmp), "TMP": str(tmp), "TEMP": str(tmp), "TEMPDIR": str(tmp),
               "NIX_BUILD_TOP": str(build_top), "PYTHONNOUSERSITE": "1", "PYTHONHASHSEED": "0",
               "DETERMINISTIC_BUILD": "1", "SOURCE_DATE_EPOCH": "315532800"}
        times["unpack"] = time.monotonic() - mark
        mark = time.monotonic()
        run(["bash", "-euo", "pipefail", "-c", pkg.post_patch], cwd=src, env=env, what="postPatch")
        run([str(python), "-m", "build", "--no-isolation", "--wheel", "--outdir", "dist", "."], cwd=src,
            env={**env, "PYTHONPATH": str(work / "build-deps")}, what="PEP 517 build (python -m build --no-isolation)")
        (wheel,) = (src / "dist").glob("*.whl")
        version = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        site = out / "lib" / f"python{version}" / "site-packages"
        # pypaInstallHook: into the prefix, offline, nothing but the wheel (this machine's pip does it)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                               "--no-index", "--no-compile", "--target", str(site), str(wheel)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"installing {wheel.name} failed:\n{proc.stdout}{proc.stderr}"
        times["build + install"] = time.monotonic() - mark
        assert (site / "nixfleet_agent").is_dir(), f"the wheel did not install into {site}"
        subprocess.run(["chmod", "-R", "a-w", str(build_top / "source"), str(out)], check=True)
        check_env = {**env, "PYTHONPATH": f"{site}:{work / 'deps'}"}
        mark = time.monotonic()
        run([str(python), "-c", "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]",
             *pkg.imports_check], cwd=out, env=check_env, what="pythonImportsCheck " + " ".join(pkg.imports_check))
        times["pythonImportsCheck"] = time.monotonic() - mark
        mark = time.monotonic()
        script = f"{pkg.pre_check}\nexec \"$@\""
        result = run(["bash", "-euo", "pipefail", "-c", script, "bash", str(python), "-m", "pytest", "-ra",
                      *pkg.test_paths], cwd=src, env=check_env, what="pytestCheckPhase")
        times["pytestCheckPhase"] = time.monotonic() - mark
        return result, times
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)

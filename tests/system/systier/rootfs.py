"""A cached Debian root filesystem with systemd and a Python venv holding the agent's dependencies.

Built once with debootstrap (about a minute and a half) and reused read-only: each test session
boots an overlay of it, so the cache stays pristine. The directory name carries a hash of the
recipe, so changing the package list or a pinned dependency builds a new one. A build happens in a
temporary directory renamed into place only when complete, under a lock, so an interrupted or
concurrent build never leaves a half-made rootfs that looks usable.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libnss-systemd",  # names for DynamicUser uids, as on NixOS
    "libpam-systemd",  # user@.service (a user manager for the Home Manager tier) needs pam_systemd
    "python3",
    "python3-venv",
    "git",
    "procps",
)
# Pure-Python runtime dependencies of the agent, pinned so the cache key is stable.
VENV_REQUIREMENTS = ("websocket-client==1.8.0", "pexpect==4.9.0", "ptyprocess==0.7.0")
VENV_DIR = "/opt/nixfleet-agent"
WHEEL_DIR = "/opt/nixfleet-wheels"
# Bump when the build steps below change in a way the lists above do not show.
RECIPE_VERSION = 1
# Units that only make noise or wait for a terminal in a test container.
MASKED_UNITS = (
    "console-getty.service",
    "getty@.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "systemd-timesyncd.service",
)

BUILD_TIMEOUT = 900


class RootfsError(RuntimeError):
    """Building the rootfs failed; the message names the step and the log to read."""


def cache_root() -> Path:
    explicit = os.environ.get("NIXFLEET_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nixfleet-agent-tests"


def recipe() -> dict[str, object]:
    return {
        "suite": SUITE,
        "packages": sorted(PACKAGES),
        "venv": sorted(VENV_REQUIREMENTS),
        "masked": sorted(MASKED_UNITS),
        "arch": os.uname().machine,
        "version": RECIPE_VERSION,
    }


def recipe_hash() -> str:
    data = json.dumps(recipe(), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def host_mirror(suite: str = SUITE) -> str:
    """The Debian archive URI this host's apt uses for `suite`: the tier talks to no other host."""
    override = os.environ.get("NIXFLEET_TEST_DEBIAN_MIRROR")
    if override:
        return override
    files = [Path("/etc/apt/sources.list")]
    listdir = Path("/etc/apt/sources.list.d")
    if listdir.is_dir():
        files += sorted(listdir.iterdir())
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        found = _mirror_in_deb822(text, suite) if path.suffix == ".sources" else _mirror_in_list(text, suite)
        if found:
            return found
    raise RootfsError(
        f"no apt source for Debian suite {suite!r} in /etc/apt/sources.list*; "
        "set NIXFLEET_TEST_DEBIAN_MIRROR to the Debian archive URI to use"
    )


def _mirror_in_deb822(text: str, suite: str) -> str | None:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None


def _mirror_in_list(text: str, suite: str) -> str | None:
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            return words[1]
    return None


def ensure(log: Path | None = None) -> Path:
    """Return the cached rootfs for the current recipe, building it first if missing."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    digest = recipe_hash()
    final = root / f"rootfs-{digest}"
    if final.is_dir():
        return final
    with open(root / f"rootfs-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # another session built it while we waited
            return final
        for stale in root.glob(f".build-rootfs-{digest}-*"):
            _remove_build_dir(stale)
        work = root / f".build-rootfs-{digest}-{os.getpid()}"
        log = log or root / f"rootfs-{digest}.build.log"
        try:
            _build(work, log)
            os.rename(work, final)
        finally:
            if work.exists():
                _remove_build_dir(work)
    return final


def _remove_build_dir(path: Path) -> None:
    """Remove an unfinished build; an interrupted debootstrap can leave /proc or /sys mounted in
    it, and those are unmounted first so the removal never reaches into them."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4] for line in mounts if line.split()[4].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def _run(argv: list[str], log: Path, step: str, timeout: float = BUILD_TIMEOUT) -> None:
    with open(log, "a") as out:
        out.write(f"\n### {step}: {' '.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise RootfsError(f"rootfs build step {step!r} took over {timeout:.0f}s; log: {log}") from None
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RootfsError(f"rootfs build step {step!r} failed (exit {proc.returncode}); log: {log}\n{tail}")


def _build(work: Path, log: Path) -> None:
    started = time.monotonic()
    log.write_text(f"recipe: {json.dumps(recipe(), sort_keys=True)}\n")
    print(f"system tier: building Debian rootfs in {work} (log {log})", file=sys.stderr)
    _run(
        ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(work), host_mirror()],
        log,
        "debootstrap",
    )
    (work / "etc/hostname").write_text("nixfleet-sys\n")
    for unit in MASKED_UNITS:
        link = work / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    wheels = work / WHEEL_DIR.lstrip("/")
    wheels.mkdir(parents=True)
    _run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--dest", str(wheels), *VENV_REQUIREMENTS],
        log,
        "download venv wheels",
    )
    _run(
        ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--directory", str(work), "--",
         "/bin/sh", "-ec",
         (f"python3 -m venv {VENV_DIR}; "
          f"{VENV_DIR}/bin/pip install --quiet --no-index --find-links {WHEEL_DIR} {' '.join(VENV_REQUIREMENTS)}; "
          "apt-get clean")],
        log,
        "venv",
    )
    (work / "etc/nixfleet-test-rootfs.json").write_text(json.dumps(recipe(), sort_keys=True) + "\n")
    with open(log, "a") as out:
        out.write(f"\nbuilt in {time.monotonic() - started:.0f}s\n")
    print(f"system tier: rootfs built in {time.monotonic() - started:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    # `python3 tests/system/systier/rootfs.py` warms the cache (e.g. before a CI run).
    print(ensure())

"""Pre-flight free space (guard/preflight.py) on real, small tmpfs file systems.

The tmpfs live in a private mount namespace (tests/mountns.py); the checks read them through
``/proc/<holder>/root`` or run inside the namespace. tmpfs counts whole pages, so a file of N MiB on
a tmpfs of M MiB leaves exactly (M - N) MiB free and the numbers in the refusal can be compared
exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mountns import MountNamespace, namespace

from nixfleet_agent.guard import preflight, settings

MIB = 1 << 20
AGENT = Path(__file__).resolve().parents[2] / "agent"


ns = pytest.fixture(name="ns")(namespace)


def system(tmp: Path, kernel: int, initrd: int) -> Path:
    """A stand-in /run/current-system: kernel and initrd are links to files of the given sizes."""
    store = tmp / "store"
    store.mkdir(exist_ok=True)
    top = tmp / "current-system"
    top.mkdir()
    for name, size in (("kernel", kernel), ("initrd", initrd)):
        (store / name).write_bytes(b"k" * size)
        (top / name).symlink_to(store / name)
    return top


def test_boot_refused_below_the_kernel_sized_threshold_then_allowed(ns: MountNamespace, tmp_path: Path) -> None:
    boot = ns.tmpfs(tmp_path / "boot", 16 * MIB)
    store = ns.tmpfs(tmp_path / "nix" / "store", 32 * MIB)
    current = system(tmp_path, kernel=3 * MIB, initrd=2 * MIB)
    pre = settings.Preflight(enable=True, boot_paths=(str(ns.outside(boot)),), store_path=str(ns.outside(store)),
                             boot_kernel_factor=2, boot_min_free=4 * MIB, store_min_free=8 * MIB)
    ns.fill(boot / "old-kernels", 8 * MIB)
    short = preflight.shortfalls(pre, current_system=current)
    assert [n.paths for n in short] == [(str(ns.outside(boot)),)]
    (need,) = short
    assert (need.free, need.required) == (8 * MIB, 10 * MIB)  # 2 x (3 + 2) MiB
    text = preflight.refusal(short)
    assert f"{ns.outside(boot)} has 8388608 bytes free (8.0 MiB), 10485760 bytes (10.0 MiB) required" in text
    assert "2 x the running kernel+initrd (5.0 MiB)" in text
    os.unlink(ns.outside(boot / "old-kernels"))
    assert preflight.shortfalls(pre, current_system=current) == []
    # and the store: filled past its floor, refused naming the store, not /boot
    ns.fill(store / "garbage", 25 * MIB)
    (need,) = preflight.shortfalls(pre, current_system=current)
    assert need.paths == (str(ns.outside(store)),) and (need.free, need.required) == (7 * MIB, 8 * MIB)


def test_the_floor_applies_when_the_kernel_cannot_be_measured(ns: MountNamespace, tmp_path: Path) -> None:
    boot = ns.tmpfs(tmp_path / "boot", 8 * MIB)
    pre = settings.Preflight(enable=True, boot_paths=(str(ns.outside(boot)),), store_path=str(tmp_path),
                             boot_min_free=6 * MIB, store_min_free=0)
    ns.fill(boot / "x", 3 * MIB)
    (need,) = preflight.shortfalls(pre, current_system=tmp_path / "no-system")
    assert (need.free, need.required) == (5 * MIB, 6 * MIB)
    assert "floor preflight.boot_min_free" in need.why
    assert preflight.shortfalls(settings.Preflight(enable=False, boot_paths=pre.boot_paths)) == []


def test_an_esp_mounted_below_boot_is_found_in_the_mount_table(ns: MountNamespace, tmp_path: Path) -> None:
    """Only /boot is configured; the ESP at /boot/efi, a filesystem of its own, is found and checked."""
    boot = ns.tmpfs(tmp_path / "boot", 32 * MIB)
    esp = ns.tmpfs(boot / "efi", 8 * MIB)
    ns.fill(esp / "EFI-stuff", 6 * MIB)
    snippet = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from nixfleet_agent.guard import preflight, settings\n"
        f"pre = settings.Preflight(enable=True, boot_paths=({str(boot)!r},), store_path={str(tmp_path)!r},\n"
        "                         boot_min_free=4 << 20, store_min_free=0)\n"
        "needs = preflight.needs(pre, current_system=Path('/nonexistent'))\n"
        "print(json.dumps([[list(n.paths), n.free, n.required] for n in needs]))\n"
    )
    proc = ns.run([sys.executable, "-c", snippet], env=dict(os.environ, PYTHONPATH=str(AGENT)))
    needs = json.loads(proc.stdout)
    assert [[str(boot)], 32 * MIB, 4 * MIB] in needs
    assert [[str(esp)], 2 * MIB, 4 * MIB] in needs  # the short one
    outside = subprocess.run(["findmnt", "-n", str(esp)], capture_output=True, text=True, check=False)
    assert outside.stdout == "", "the test's mounts leaked into the host namespace"


def test_paths_on_one_filesystem_are_checked_once_against_the_larger_need(ns: MountNamespace, tmp_path: Path) -> None:
    disk = ns.tmpfs(tmp_path / "disk", 16 * MIB)
    (ns.outside(disk) / "boot").mkdir()
    (ns.outside(disk) / "nix").mkdir()
    pre = settings.Preflight(enable=True, boot_paths=(str(ns.outside(disk / "boot")),),
                             store_path=str(ns.outside(disk / "nix" / "store")),  # not there yet: its parent
                             boot_min_free=2 * MIB, store_min_free=12 * MIB)
    (need,) = preflight.needs(pre, current_system=tmp_path / "none")
    assert need.paths == (str(ns.outside(disk / "boot")), str(ns.outside(disk / "nix")))
    assert (need.free, need.required) == (16 * MIB, 12 * MIB) and not need.short
    assert preflight.summary([need]) == (f"{ns.outside(disk / 'boot')} + {ns.outside(disk / 'nix')} 16.0 MiB free "
                                         "(12.0 MiB required)")
    ns.fill(disk / "big", 5 * MIB)
    (need,) = preflight.shortfalls(pre, current_system=tmp_path / "none")
    assert "(same filesystem as " in need.describe()


def test_a_missing_boot_path_is_skipped(tmp_path: Path) -> None:
    pre = settings.Preflight(enable=True, boot_paths=(str(tmp_path / "no-boot"),), store_path=str(tmp_path),
                             store_min_free=0)
    assert [n.paths for n in preflight.needs(pre)] == [(str(tmp_path),)]


def test_mount_points_with_escaped_characters(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text("/dev/vda1 /boot ext4 rw 0 0\n/dev/vda2 /boot/my\\040esp vfat rw 0 0\n"
                     "/dev/vda3 /bootleg ext4 rw 0 0\nbroken\n")
    assert preflight.mounts_below(["/boot"], table) == ["/boot/my esp"]

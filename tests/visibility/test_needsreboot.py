"""Needs-reboot detection against stand-in system profiles: symlink trees shaped like
/run/booted-system, /run/current-system and the system profile on NixOS."""

from __future__ import annotations

import os
from pathlib import Path

from nixfleet_agent.visibility.needsreboot import RebootCheck


def system(root: Path, name: str, kernel: str, initrd: str, modules: str) -> Path:
    """A store path of a system closure whose kernel/initrd/kernel-modules point at other paths."""
    path = root / "nix/store" / name
    path.mkdir(parents=True)
    for link, target in (("kernel", f"{kernel}/bzImage"), ("initrd", f"{initrd}/initrd"),
                         ("kernel-modules", modules)):
        os.symlink(root / "nix/store" / target, path / link)
    (path / "etc").mkdir()  # the rest of a system, which a switch activates in place
    return path


def link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    os.symlink(target, path)


def host(tmp_path: Path, booted: Path, current: Path, profile: Path | None = None) -> RebootCheck:
    link(tmp_path / "run/booted-system", booted)
    link(tmp_path / "run/current-system", current)
    if profile is not None:
        gen = tmp_path / "nix/var/nix/profiles/system-2-link"
        link(gen, profile)
        link(tmp_path / "nix/var/nix/profiles/system", Path("system-2-link"))  # relative, as nix makes it
    return RebootCheck("nixos", tmp_path)


def test_same_kernel_no_reboot_even_when_the_rest_changed(tmp_path: Path) -> None:
    a = system(tmp_path, "aaa-nixos-system", "k1-linux", "i1-initrd", "m1-modules")
    b = system(tmp_path, "bbb-nixos-system", "k1-linux", "i1-initrd", "m1-modules")
    state = host(tmp_path, a, b, b).state()
    assert state.applicable and state.needed is False and state.reasons == ()


def test_each_part_is_a_reason(tmp_path: Path) -> None:
    a = system(tmp_path, "aaa-nixos-system", "k1-linux", "i1-initrd", "m1-modules")
    b = system(tmp_path, "bbb-nixos-system", "k2-linux", "i1-initrd", "m2-modules")
    state = host(tmp_path, a, b, b).state()
    assert state.needed is True and state.reasons == ("kernel", "kernel-modules")
    c = system(tmp_path, "ccc-nixos-system", "k1-linux", "i2-initrd", "m1-modules")
    assert host(tmp_path, a, c, c).state().reasons == ("initrd",)


def test_boot_pending_when_the_profile_is_neither_running_nor_booted(tmp_path: Path) -> None:
    """``nixos-rebuild boot`` (or a switch turned into a boot): same kernel, but the next boot
    brings another configuration."""
    a = system(tmp_path, "aaa-nixos-system", "k1-linux", "i1-initrd", "m1-modules")
    b = system(tmp_path, "bbb-nixos-system", "k1-linux", "i1-initrd", "m1-modules")
    state = host(tmp_path, a, a, b).state()
    assert state.needed is True and state.reasons == ("boot-pending",)
    # a `nixos-rebuild test` of b while the profile still boots a: a reboot would go back, not forward
    assert host(tmp_path, a, b, a).state().needed is False


def test_cached_by_link_targets_and_sees_a_switch(tmp_path: Path) -> None:
    a = system(tmp_path, "aaa-nixos-system", "k1-linux", "i1-initrd", "m1-modules")
    b = system(tmp_path, "bbb-nixos-system", "k2-linux", "i1-initrd", "m1-modules")
    check = host(tmp_path, a, a, a)
    assert check.state().needed is False
    # a change inside the closure is never made by nix (store paths are immutable): the cache
    # keyed by the top-level links is right to ignore it; a switch moves current-system
    link(tmp_path / "run/current-system", b)
    assert check.state().reasons == ("kernel",)


def test_unknown_without_booted_system_and_not_applicable_elsewhere(tmp_path: Path) -> None:
    state = RebootCheck("nixos", tmp_path).state()
    assert state.applicable and state.needed is None and "booted-system" in state.detail
    for platform in ("darwin", "home-manager"):
        other = RebootCheck(platform, tmp_path).state()
        assert not other.applicable and other.needed is None

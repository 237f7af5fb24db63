"""The root program's guard-rails (guard/rootside.py): pre-flight refusal with the numbers, ``boot``
instead of ``switch`` when the switch inhibitors changed, generation retention after a success.

Pre-flight runs the real root program (``python -m nixfleet_agent.root``) inside a private mount
namespace whose small tmpfs stands in for /boot (tests/mountns.py); the rest runs it in-process like
test_privileged.py. Stand-in systems are symlink trees with a ``switch-inhibitors`` file; the
``nix`` shim prints the toplevel ``nix build --json`` would.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from mountns import MountNamespace, namespace
from root_support import ID, Host

MIB = 1 << 20
AGENT = Path(__file__).resolve().parents[2] / "agent"

NIX_BUILD_SHIM = """#!/bin/sh
printf 'nix %s\\n' "$*" >> "$SHIM_CALLS"
echo "nix shim: evaluating" >&2
[ -n "$SHIM_NIX_FAIL" ] && { echo "error: build failed" >&2; exit 1; }
printf '[{"drvPath":"/nix/store/x.drv","outputs":{"out":"%s"}}]\\n' "$SHIM_TOPLEVEL"
"""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("SHIM_CALLS", "")
    monkeypatch.setenv("SHIM_EXIT", "0")
    h = Host(tmp_path)
    (h.bin / "nix").write_text(NIX_BUILD_SHIM)
    for name in ("nix-env", "nix-store"):
        (h.bin / name).write_text(f"#!/bin/sh\nprintf '{name} %s\\n' \"$*\" >> \"$SHIM_CALLS\"\n"
                                  f"exit \"${{SHIM_{name.replace('-', '_').upper()}_EXIT:-0}}\"\n")
        (h.bin / name).chmod(0o755)
    return h


def configure(host: Host, preflight: dict[str, object] | None = None,
              retention: dict[str, object] | None = None) -> None:
    """The agent's TOML as the module renders it, with [preflight]/[retention], given to root."""
    lines = [f'repo_url = "{host.origin}"', 'hostname = "web1"']
    for name, table in (("preflight", preflight), ("retention", retention)):
        if table is not None:
            lines.append(f"[{name}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    config = host.tmp / "nixfleet-agent.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o644)
    host.extra = ["--config", str(config), "--nix-env", str(host.bin / "nix-env"),
                  "--nix-store", str(host.bin / "nix-store"), *host.extra]


def system(path: Path, inhibitors: object | None, kernel: int = 0, initrd: int = 0) -> Path:
    """A stand-in system toplevel: kernel/initrd links, a switch-inhibitors file, switch-to-configuration."""
    path.mkdir(parents=True)
    store = path.parent / f"{path.name}-store"
    store.mkdir()
    for name, size in (("kernel", kernel), ("initrd", initrd)):
        if size:
            (store / name).write_bytes(b"\0" * size)
            (path / name).symlink_to(store / name)
    if inhibitors is not None:
        (store / "switch-inhibitors").write_text(inhibitors if isinstance(inhibitors, str) else json.dumps(inhibitors))
        (path / "switch-inhibitors").symlink_to(store / "switch-inhibitors")
    (path / "bin").mkdir()
    stc = path / "bin" / "switch-to-configuration"
    stc.write_text(f"#!/bin/sh\nprintf 'switch-to-configuration({path.name}) %s\\n' \"$*\" >> \"$SHIM_CALLS\"\n"
                   "exit \"${SHIM_STC_EXIT:-0}\"\n")
    stc.chmod(0o755)
    return path


# ------------------------------------------------------------------------------ pre-flight


ns = pytest.fixture(name="ns")(namespace)


def run_in(ns: MountNamespace, host: Host) -> int:
    """The real root program, as its own process, inside the mount namespace."""
    env = dict(os.environ, PYTHONPATH=str(AGENT), SHIM_CALLS=str(host.calls), SHIM_EXIT="0",
               SHIM_TOPLEVEL=str(host.tmp / "new-system"))
    proc = ns.run([sys.executable, "-m", "nixfleet_agent.root", *host.argv()], env=env, check=False)
    return proc.returncode


def test_a_full_boot_refuses_the_switch_with_the_numbers_then_a_freed_one_switches(
        host: Host, ns: MountNamespace) -> None:
    boot = ns.tmpfs(host.tmp / "boot", 16 * MIB)
    current = system(host.tmp / "current-system", {"dbus-implementation": "dbus"}, kernel=3 * MIB, initrd=2 * MIB)
    system(host.tmp / "new-system", {"dbus-implementation": "dbus"})
    configure(host, preflight={"boot_paths": [str(boot)], "store_path": str(host.tmp), "boot_kernel_factor": 2,
                               "boot_min_free": 4 * MIB, "store_min_free": 0})
    host.extra += ["--current-system", str(current)]
    ns.fill(boot / "old-generations", 8 * MIB)
    host.write(host.good())
    assert run_in(ns, host) == 1
    result = host.result()
    assert result["exit_code"] == 2
    assert result["error"].startswith("preflight: not enough free space for a switch: "
                                      f"{boot} has 8388608 bytes free (8.0 MiB), 10485760 bytes (10.0 MiB) required: "
                                      "2 x the running kernel+initrd (5.0 MiB)"), result["error"]
    assert host.builds() == [] and not any(c.startswith("nix ") for c in host.shim_calls())  # nothing built
    assert not host.clone.exists()  # refused before root fetched anything
    # freed: the next request goes ahead
    os.unlink(ns.outside(boot / "old-generations"))
    host.write(host.good(id="freed-1"))
    assert run_in(ns, host) == 0
    assert host.result("freed-1")["exit_code"] == 0 and "error" not in host.result("freed-1")
    assert host.builds() == [f"switch --flake {host.flake(host.commit)}"]
    assert f"pre-flight: {boot} 16.0 MiB free (10.0 MiB required)" in host.log("freed-1")


def test_a_full_store_filesystem_refuses_the_switch(host: Host, ns: MountNamespace) -> None:
    store = ns.tmpfs(host.tmp / "nix" / "store", 8 * MIB)
    configure(host, preflight={"boot_paths": [], "store_path": str(store), "store_min_free": 6 * MIB,
                               "switch_inhibitors": False})
    ns.fill(store / "closure", 3 * MIB)
    host.write(host.good())
    assert run_in(ns, host) == 1
    assert (f"{store} has 5242880 bytes free (5.0 MiB), 6291456 bytes (6.0 MiB) required: the floor "
            "preflight.store_min_free") in host.result()["error"]
    assert host.builds() == []


def test_without_a_preflight_table_nothing_is_checked(host: Host) -> None:
    """The nix-darwin module and older configs render no [preflight]: today's behaviour, no nix build."""
    configure(host)
    host.write(host.good())
    assert host.run() == 0
    assert [c.split()[0] for c in host.shim_calls()] == ["switch"]


def test_a_bad_preflight_value_in_roots_config_is_a_config_refusal(host: Host) -> None:
    configure(host, preflight={"store_min_free": -1})
    host.write(host.good())
    assert host.run() == 2
    error = host.rejected()["error"]
    assert error.startswith("config: preflight.store_min_free (in ") and "got -1" in error
    assert host.builds() == []


# ------------------------------------------------------------------------------ switch inhibitors


def inhibited(host: Host, current: object | None, new: object | None, **env: str) -> int:
    cur = system(host.tmp / "current-system", current)
    system(host.tmp / "new-system", new)
    configure(host, preflight={"boot_paths": [], "store_path": str(host.tmp), "store_min_free": 0})
    host.extra += ["--current-system", str(cur)]
    os.environ["SHIM_TOPLEVEL"] = str(host.tmp / "new-system")
    os.environ.update(env)
    host.write(host.good())
    return host.run()


def test_changed_inhibitors_boot_instead_of_switch_and_say_so(host: Host) -> None:
    assert inhibited(host, {"dbus-implementation": "dbus", "kernel": "6.1"},
                     {"dbus-implementation": "broker", "kernel": "6.1"}) == 0
    flake = host.flake(host.commit)
    ref, _, attr = flake.partition("#")
    calls = host.shim_calls()
    assert calls[0] == ("nix --extra-experimental-features nix-command flakes build --no-link --json "
                        f'{ref}#nixosConfigurations."{attr}".config.system.build.toplevel')
    assert host.builds() == [f"boot --flake {flake}"]
    result = host.result()
    assert result["exit_code"] == 0 and result["activation"] == "boot"
    assert result["inhibitors"] == ["dbus-implementation: dbus -> broker"]
    assert "takes effect at the next reboot" in result["notes"][0]
    log = host.log()
    assert "switch inhibited (dbus-implementation: dbus -> broker): ran nixos-rebuild boot instead" in log
    assert "nix shim: evaluating" in log  # the build's output is in the log


@pytest.mark.parametrize(("current", "new"), [
    ({"dbus-implementation": "dbus"}, {"dbus-implementation": "dbus"}),
    ({"dbus-implementation": "dbus"}, {"other": "x"}),  # only keys in both count (as nixpkgs)
    (None, {"dbus-implementation": "broker"}),  # the running system has none: {}
    ({"dbus-implementation": "dbus"}, None),
], ids=["unchanged", "disjoint-keys", "no-current-file", "no-new-file"])
def test_unchanged_inhibitors_switch(host: Host, current: object, new: object) -> None:
    assert inhibited(host, current, new) == 0
    assert host.builds() == [f"switch --flake {host.flake(host.commit)}"]
    assert "activation" not in host.result()


def test_inhibitor_files_that_are_not_json_are_compared_whole(host: Host) -> None:
    assert inhibited(host, "/nix/store/aaa-systemd\n", "/nix/store/bbb-systemd\n") == 0
    assert host.builds() == [f"boot --flake {host.flake(host.commit)}"]


def test_a_failed_build_of_the_toplevel_fails_the_switch(host: Host) -> None:
    assert inhibited(host, {}, {}, SHIM_NIX_FAIL="1") == 1
    result = host.result()
    assert result["exit_code"] == 1 and "nix build, exit 1" in result["error"]
    assert host.builds() == []  # no nixos-rebuild after a failed build


# ------------------------------------------------------------------------------ retention


def retained(host: Host, retention: dict[str, object], **env: str) -> dict[str, object]:
    profile = system(host.tmp / "profile", None)
    configure(host, preflight={"boot_paths": [], "store_path": str(host.tmp), "store_min_free": 0,
                               "switch_inhibitors": False}, retention=retention)
    host.extra += ["--system-profile", str(profile)]
    os.environ.update(env)
    host.write(host.good())
    assert host.run() == 0
    return host.result()


def test_retention_keeps_n_generations_rewrites_boot_entries_then_collects_garbage(host: Host) -> None:
    result = retained(host, {"keep_generations": 3, "gc": True})
    profile = host.tmp / "profile"
    assert host.shim_calls() == [
        f"switch --flake {host.flake(host.commit)}",
        f"nix-env --profile {profile} --delete-generations +3",
        "switch-to-configuration(profile) boot",
        "nix-store --gc",
    ]
    assert result["exit_code"] == 0 and "notes" not in result


def test_retention_is_off_without_the_table_and_after_a_failed_switch(host: Host) -> None:
    configure(host, preflight={"boot_paths": [], "store_path": str(host.tmp), "store_min_free": 0,
                               "switch_inhibitors": False})
    host.write(host.good())
    assert host.run() == 0
    assert [c.split()[0] for c in host.shim_calls()] == ["switch"]
    configure(host, retention={"keep_generations": 2, "gc": True})
    host.write(host.good(id="fails-1"))
    assert host.run(exit_code=1) == 1
    assert [c.split()[0] for c in host.shim_calls()] == ["switch", "switch"]  # nothing deleted


def test_a_failed_retention_step_is_a_note_not_a_failed_switch(host: Host) -> None:
    result = retained(host, {"keep_generations": 2, "gc": True}, SHIM_NIX_ENV_EXIT="1")
    assert result["exit_code"] == 0
    assert result["notes"] == ["retention: deleting system generations beyond the last 2 failed (exit 1)"]
    # the boot entries are not rewritten when nothing was deleted; the garbage collection still runs
    assert [c.split()[0] for c in host.shim_calls()] == ["switch", "nix-env", "nix-store"]
    assert ID in host.out.joinpath(ID, "result.json").read_text()


def test_inhibitors_are_checked_also_with_the_free_space_check_off(host: Host) -> None:
    cur = system(host.tmp / "current-system", {"dbus-implementation": "dbus"})
    system(host.tmp / "new-system", {"dbus-implementation": "broker"})
    configure(host, preflight={"enable": False})
    host.extra += ["--current-system", str(cur)]
    os.environ["SHIM_TOPLEVEL"] = str(host.tmp / "new-system")
    host.write(host.good())
    assert host.run() == 0
    assert host.builds() == [f"boot --flake {host.flake(host.commit)}"]
    assert "pre-flight:" not in host.log()


def test_nix_darwin_gets_the_store_check_but_neither_inhibitors_nor_retention(tmp_path: Path,
                                                                             ns: MountNamespace) -> None:
    from test_darwin import Mac

    os.environ.update(SHIM_CALLS="", SHIM_EXIT="0")
    mac = Mac(tmp_path)
    store = ns.tmpfs(tmp_path / "nix" / "store", 8 * MIB)
    configure(mac, preflight={"boot_paths": [], "store_path": str(store), "store_min_free": 6 * MIB},
              retention={"keep_generations": 1, "gc": True})
    ns.fill(store / "closure", 3 * MIB)
    mac.write(mac.good())
    assert run_in(ns, mac) == 1
    assert "preflight: not enough free space for a switch: " in mac.result()["error"]
    os.unlink(ns.outside(store / "closure"))
    mac.write(mac.good(id="mac-2"))
    assert run_in(ns, mac) == 0
    assert mac.shim_calls() == [f"darwin-rebuild switch --flake {mac.flake(mac.commit)}"]  # no nix build, nix-env

"""The container itself: the systemd features the agent's units depend on work here, and the
harness leaves nothing behind. If these fail, the agent tests below cannot mean anything."""

from __future__ import annotations

from pathlib import Path

from systier import container

DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range

SMOKE_UNIT = """\
[Unit]
Description=system tier smoke unit

[Service]
Type=oneshot
RemainAfterExit=yes
DynamicUser=yes
StateDirectory=smoke
StateDirectoryMode=0700
LoadCredential=token:/etc/smoke/token
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
ExecStart=/bin/sh -c 'id -u > "$STATE_DIRECTORY/uid"; cat "$CREDENTIALS_DIRECTORY/token" > "$STATE_DIRECTORY/seen"; \
  if touch /etc/smoke/written 2>/dev/null; then echo yes; else echo no; fi > "$STATE_DIRECTORY/etc-writable"'
"""


def test_dynamic_user_state_directory_and_credential(system_container: container.Container) -> None:
    box = system_container
    box.write_file("/etc/smoke/token", "smoke-secret-5f1c\n", mode=0o600)
    box.write_file("/etc/systemd/system/smoke.service", SMOKE_UNIT)
    box.systemctl("daemon-reload")
    box.systemctl("start", "smoke.service", timeout=30)

    uid = int(box.read_file("/var/lib/private/smoke/uid"))
    assert uid in DYNAMIC_UIDS
    assert box.read_file("/var/lib/private/smoke/seen") == "smoke-secret-5f1c\n"
    assert box.read_file("/var/lib/private/smoke/etc-writable").strip() == "no"
    mode_owner = box.run("stat", "-c", "%a %u", "/var/lib/private/smoke").stdout.split()
    assert mode_owner == ["700", str(uid)]
    assert box.run("readlink", "/var/lib/smoke").stdout.strip() == "private/smoke"
    assert "smoke-secret" not in box.systemctl("show", "smoke.service").stdout


def test_container_leaves_no_trace(system_rootfs: Path) -> None:
    box = container.started(system_rootfs)
    session = box.session_dir
    assert session is not None
    box.write_file("/etc/written-by-test", "x")
    nspawn = box.proc
    box.stop()
    assert nspawn is not None and nspawn.poll() is not None
    assert box.leftover_mounts() == []
    assert not session.exists()
    assert not (system_rootfs / "etc/written-by-test").exists()

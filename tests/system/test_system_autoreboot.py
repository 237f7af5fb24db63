"""Issue 16, the automatic reboot under a real systemd: the agent, in the units the NixOS module
renders, sees a needed reboot (stand-in /run/booted-system and /run/current-system whose kernel
links differ), announces it on the dashboard and asks the real root unit (path unit ->
nixfleet-agent-privileged.service, action ``reboot``), whose ``--systemctl`` is a stand-in that
only records its arguments (the container must stay up)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from dashboard import Dashboard
from systier import agenthost, units
from systier.agenthost import AGENT_UNIT, PATH_UNIT, PRIV_UNIT, AgentHost
from systier.waiting import wait_for

from test_system_agent import TOKEN, fleet, host  # noqa: F401 - module-scoped fixtures (TOKEN: conftest dash)

HOST = agenthost.HOSTNAME
FAKE_SYSTEMCTL = "/usr/local/sbin/nixfleet-test-systemctl"
CALLS = "/var/lib/nixfleet-test-systemctl.calls"
STAND_IN = """
mkdir -p /srv/nixfleet-sys/k1 /srv/nixfleet-sys/k2 /srv/nixfleet-sys/i1 /srv/nixfleet-sys/m1
for s in a b; do mkdir -p /srv/nixfleet-sys/system-$s; done
ln -sfn /srv/nixfleet-sys/k1/bzImage /srv/nixfleet-sys/system-a/kernel
ln -sfn /srv/nixfleet-sys/k2/bzImage /srv/nixfleet-sys/system-b/kernel
for s in a b; do
  ln -sfn /srv/nixfleet-sys/i1/initrd /srv/nixfleet-sys/system-$s/initrd
  ln -sfn /srv/nixfleet-sys/m1 /srv/nixfleet-sys/system-$s/kernel-modules
done
ln -sfn /srv/nixfleet-sys/system-a /run/booted-system
ln -sfn /srv/nixfleet-sys/system-b /run/current-system
"""


@pytest.fixture(scope="module")
def rebooting(host: AgentHost) -> Iterator[AgentHost]:  # noqa: F811
    box = host.box
    box.write_file(FAKE_SYSTEMCTL, f'#!/bin/sh\necho "$*" >> {CALLS}\n', mode=0o755)
    box.run("rm", "-f", CALLS)
    box.sh(STAND_IN)
    unit = f"/etc/systemd/system/{PRIV_UNIT}"
    text = re.sub(r"--systemctl \S+", f"--systemctl {FAKE_SYSTEMCTL}", box.read_file(unit))
    assert FAKE_SYSTEMCTL in text
    box.write_file(unit, text)
    box.write_file(units.CONFIG_PATH, box.read_file(units.CONFIG_PATH) + "\n[reboot]\nallow = true\n")
    box.systemctl("daemon-reload")
    box.systemctl("restart", AGENT_UNIT)
    yield host
    box.systemctl("stop", AGENT_UNIT, PATH_UNIT, check=False)
    box.run("rm", "-rf", "/run/booted-system", "/run/current-system", "/srv/nixfleet-sys", check=False)


def test_needed_reboot_is_announced_and_done_through_the_root_unit(rebooting: AgentHost, dash: Dashboard) -> None:  # noqa: F811
    box = rebooting.box
    beat = dash.wait_message("heartbeat", HOST, since=dash.mark(), timeout=30,
                             where=lambda r: (r.payload.get("reboot") or {}).get("needed") is True).payload
    assert beat["reboot"]["reasons"] == ["kernel"] and beat["reboot"]["auto"]["allowed"] is True
    line = dash.wait_message("output", HOST, timeout=60,
                             where=lambda r: r.payload["line"].startswith("🔁 Automatic reboot")).payload
    assert "needs reboot (kernel)" in line["line"] and line["command"] == "reboot"
    status = dash.wait_message("status", HOST, timeout=60, where=lambda r: r.payload["command"] == "reboot").payload
    assert status["status"] == "ok", status
    calls = wait_for(lambda: box.run("cat", CALLS, check=False).stdout.split("\n")[0], 30, "the root unit's systemctl")
    assert calls.strip() == "reboot"

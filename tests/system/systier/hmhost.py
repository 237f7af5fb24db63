"""Turn the booted container into a Home Manager-on-Linux agent host: a user whose systemd user
manager runs without a login (``loginctl enable-linger``: logind starts ``user@<uid>.service``, with
pam_systemd, as on a server where Home Manager runs the agent), the agent's user unit as
modules/home-manager.nix renders it (tests/golden/hm-linux, store paths adapted like the NixOS
units), a TOML config with this test's endpoints and the stand-in home-manager on the unit's PATH."""

from __future__ import annotations

import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

from support import toml_dumps

from . import agentwheel, units
from .container import Container
from .waiting import wait_for

USER = "hm"
HOSTNAME = "systier-hm"
AGENT_UNIT = "nixfleet-agent.service"
GOLDEN_DIR = units.REPO_ROOT / "tests" / "golden" / "hm-linux"
SHIM_SOURCE = Path(__file__).resolve().parents[1] / "files" / "home-manager"
SHIM_PATH = "/usr/local/bin/home-manager"
CONFIG_PATH = "/etc/nixfleet-agent/hm.toml"  # in the store on a real host: world-readable, no secret
CONTROL = "/etc/nixfleet-test"


@dataclass
class HmHost:
    box: Container
    uid: int
    home: str

    @property
    def state_dir(self) -> str:
        return f"{self.home}/.local/state/nixfleet-agent"

    @property
    def unit_path(self) -> str:
        return f"{self.home}/.config/systemd/user/{AGENT_UNIT}"

    def user(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run argv as the user, with what pam_systemd gives a session (XDG_RUNTIME_DIR)."""
        return self.box.run("setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--init-groups", *argv,
                            check=check, timeout=timeout,
                            env={"HOME": self.home, "USER": USER, "XDG_RUNTIME_DIR": f"/run/user/{self.uid}"})

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.user("systemctl", "--user", "--no-pager", *args, check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "--value", f"--property={prop}", unit).stdout.strip()

    def agent_pid(self) -> int:
        return int(self.show(AGENT_UNIT, "MainPID") or 0)

    def wait_agent(self, timeout: float = 30, not_pid: int = 0) -> int:
        """The agent unit's main pid once it runs (and is not ``not_pid``)."""
        return wait_for(lambda: (p := self.agent_pid()) not in (0, not_pid) and p, timeout,
                        f"the agent's user unit to run{f' a pid other than {not_pid}' if not_pid else ''}",
                        detail=self.journal)

    def switch_units(self) -> list[str]:
        out = self.systemctl("list-units", "--all", "--plain", "--no-legend", "nixfleet-agent-switch-*").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def journal(self, lines: int = 80) -> str:
        return self.box.run("journalctl", "--no-pager", "-o", "short-precise", "-n", str(lines),
                            f"_UID={self.uid}", check=False, timeout=20).stdout


def config_for(url: str, repo_url: str, home: str, token_file: str) -> str:
    data = tomllib.loads((GOLDEN_DIR / "nixfleet-agent.toml").read_text())
    data.update({"url": url, "repo_url": repo_url, "hostname": HOSTNAME, "interval": 1, "log_level": "debug",
                 "state_dir": f"{home}/.local/state/nixfleet-agent", "token_file": token_file})
    return toml_dumps(data)


def set_switch(box: Container, seconds: int, exit_code: int = 0) -> None:
    box.write_file(f"{CONTROL}/hm-seconds", f"{seconds}\n")
    box.write_file(f"{CONTROL}/hm-exit", f"{exit_code}\n")


def install(box: Container, *, wheel_host: Path, exchange_host: Path, exchange_inside: str, url: str,
            repo_url: str, token: str) -> HmHost:
    agentwheel.install(box, f"{exchange_inside}/{wheel_host.relative_to(exchange_host)}")
    box.write_file(SHIM_PATH, SHIM_SOURCE.read_text(), mode=0o755)
    set_switch(box, 0)
    if box.run("id", "-u", USER, check=False).returncode != 0:
        box.run("useradd", "--create-home", "--shell", "/bin/sh", USER)
    uid = int(box.run("id", "-u", USER).stdout.strip())
    home = f"/home/{USER}"
    box.run("loginctl", "enable-linger", USER)
    box.wait_unit_active(f"user@{uid}.service", timeout=30)
    host = HmHost(box=box, uid=uid, home=home)

    token_file = f"{home}/.config/nixfleet/token"
    box.write_file(token_file, token, mode=0o600)
    box.write_file(CONFIG_PATH, config_for(url, repo_url, home, token_file))

    def exists(path: str) -> bool:
        return box.run("test", "-e", path, check=False).returncode == 0

    golden = GOLDEN_DIR / AGENT_UNIT
    text = units.adapt(golden.read_text(), golden.name, exists).replace(units.CONFIG_PATH, CONFIG_PATH)
    box.write_file(host.unit_path, text)
    box.run("chown", "-R", f"{uid}:{uid}", f"{home}/.config")
    host.systemctl("daemon-reload")
    host.systemctl("start", AGENT_UNIT)
    return host

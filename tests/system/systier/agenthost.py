"""Turn the booted container into a NixOS-like agent host: agent wheel in the venv, the golden
units adapted to it, a TOML config pointing at the test's dashboard and fleet repo, the token at
the path the golden unit's LoadCredential= names, and the nixos-rebuild shim."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from support import toml_dumps

from . import agentwheel, units
from .container import Container
from .rootfs import VENV_DIR

AGENT_UNIT = "nixfleet-agent.service"
PRIV_UNIT = "nixfleet-agent-privileged.service"
PATH_UNIT = "nixfleet-agent-privileged.path"
STATE_DIR = "/var/lib/private/nixfleet-agent"
PRIV_DIR = "/var/lib/nixfleet-agent-privileged"
RESULTS_DIR = f"{PRIV_DIR}/results"  # what the agent reads (privileged_dir)
ROOT_CLONE = f"{PRIV_DIR}/root/repo"  # root's own clone of the fleet repository
HOSTNAME = "systier"


@dataclass
class AgentHost:
    box: Container
    unit_names: list[str]
    token_path: str
    source_commit: str

    def agent_pid(self) -> int:
        return int(self.box.show(AGENT_UNIT, "MainPID") or 0)


def config_for(golden_dir: Path, url: str, repo_url: str) -> str:
    """The golden TOML (when the golden files have one) with this test's endpoints."""
    golden = golden_dir / "nixfleet-agent.toml"
    data: dict[str, object] = tomllib.loads(golden.read_text()) if golden.is_file() else {
        "switch_launcher": "privileged",
        "privileged_dir": RESULTS_DIR,
    }
    data.update({"url": url, "repo_url": repo_url, "hostname": HOSTNAME, "interval": 1, "log_level": "debug"})
    return toml_dumps(data)


def install(
    box: Container,
    *,
    wheel_host: Path,
    exchange_host: Path,
    exchange_inside: str,
    url: str,
    repo_url: str,
    token: str,
    golden_dir: Path = units.GOLDEN_DIR,
    source_commit: str = "",
) -> AgentHost:
    golden = units.golden_units(golden_dir)
    names = [path.name for path in golden]
    missing = {AGENT_UNIT, PRIV_UNIT, PATH_UNIT} - set(names)
    if missing:
        raise units.GoldenError(f"golden units missing in {golden_dir}: {', '.join(sorted(missing))}")

    rel = wheel_host.relative_to(exchange_host)
    agentwheel.install(box, f"{exchange_inside}/{rel}")
    box.write_file(units.SHIM_PATH, units.SHIM_SOURCE.read_text(), mode=0o755)
    box.write_file(units.NIX_ENV_SHIM_PATH, (units.SHIM_SOURCE.parent / "nix-env").read_text(), mode=0o755)
    box.write_file("/etc/nixfleet-test/rebuild-seconds", "0\n")
    # root builds the toplevel first to compare its switch inhibitors (guard/rootside.py)
    for tool in units.NIX_TOOLS:
        box.write_file(f"/usr/local/bin/{tool}", units.NIX_TOOLS_SOURCE.read_text(), mode=0o755)
    box.write_file(units.CONFIG_PATH, config_for(golden_dir, url, repo_url))
    # What NixOS has and Debian lacks: the marker the agent detects NixOS by, and the agent on
    # the system PATH (where the agent looks for its installed self after a switch).
    box.write_file("/etc/NIXOS", "")
    box.run("ln", "-sf", f"{VENV_DIR}/bin/nixfleet-agent", "/usr/local/bin/nixfleet-agent")

    def exists(path: str) -> bool:
        return box.run("test", "-e", path, check=False).returncode == 0

    credentials: dict[str, str] = {}
    for path in golden:
        text = units.adapt(path.read_text(), path.name, exists)
        if path.name == AGENT_UNIT:
            credentials = dict(c.split(":", 1) for c in units.directives(text, "LoadCredential"))  # type: ignore[misc]
        box.write_file(f"/etc/systemd/system/{path.name}", text)
    if "token" not in credentials:
        raise units.GoldenError(f"{AGENT_UNIT} in {golden_dir}: no LoadCredential=token:... line")
    # Every credential source must exist or systemd refuses to start the unit. Only the token
    # matters here; a deploy key is unused with the git:// remote but must be a private file.
    for name, source in credentials.items():
        box.write_file(source, token if name == "token" else f"placeholder {name} (unused by this test)\n", mode=0o600)
    token_path = credentials["token"]
    box.systemctl("daemon-reload")
    box.systemctl("start", PATH_UNIT)
    box.systemctl("start", AGENT_UNIT)
    return AgentHost(box=box, unit_names=names, token_path=token_path, source_commit=source_commit)

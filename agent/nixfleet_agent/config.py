"""Agent configuration: command line > environment > TOML file > defaults, validated up front.

Every setting has one TOML key and one ``NIXFLEET_*`` variable (the upstream names keep their
meaning). All problems are collected and reported together, one line each, naming where the bad value
came from, so an operator fixes a config in one round instead of one crash per restart. The token is
only ever read from the environment, a token file or a systemd credential and never echoed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .guard import settings as guard_settings
from .health.settings import DISABLED as HEALTH_DISABLED, HealthSettings, parse as parse_health
from .host.facts import default_state_dir, detect_hostname, detect_platform, is_darwin
from .log import LEVELS
from .kinds import LAUNCHERS
from .names import HOSTNAME_RE
from .localfile import LocalFileError, read_text
from .secret import Secret, read_token_file
from .visibility import settings as visibility_settings


def _toml() -> Any:
    """The TOML parser, imported only when a config file is used (keeps env-only agents smaller)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
    return tomllib


class ConfigError(Exception):
    """All problems found in one load; each entry reads ``KEY: message (got 'value')``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


LOG_LEVELS = tuple(LEVELS)
# The name a fleet flake gives this flake as an input (the README's and the modules' `agentInput`
# default), the one input bump-flake and force-update move. Upstream's agent came with the
# dashboard in one flake, usually called `nixfleet`; such fleets set agent_input = "nixfleet".
DEFAULT_AGENT_INPUT = "nixfleet-agent"
# What to set when the fleet flake names this flake otherwise (agent and root side say the same).
AGENT_INPUT_HINT = "set services.nixfleet-agent.agentInput (agent_input) to the name your fleet flake gives this flake"
_FLAKE_INPUT = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")  # a Nix identifier
PLATFORMS = ("nixos", "darwin", "home-manager")
# The host name rule, the same regex modules/nixos.nix asserts (validAttr) and the root side checks
# (root/request.py _ATTR): a flake attribute and a dashboard id, never a path or a shell word.
CONFIG_FILE_MAX = 1 << 20
# Settings that are file system paths: relative ones are refused (they would resolve against
# whatever directory the agent was started in; a clone would land in relstate/relstate/...).
PATH_KEYS = ("state_dir", "repo_dir", "config_repo", "token_file", "ssh_key_file", "known_hosts_file",
             "ca_file", "privileged_dir")

# key -> (env var, kind, bounds). kind: str | int | list. Order = documentation order.
_SPECS: dict[str, tuple[str, str, tuple[int, int] | None]] = {
    "url": ("NIXFLEET_URL", "str", None),
    "token_file": ("NIXFLEET_TOKEN_FILE", "str", None),
    "repo_url": ("NIXFLEET_REPO_URL", "str", None),
    "branch": ("NIXFLEET_BRANCH", "str", None),
    "repo_dir": ("NIXFLEET_REPO_DIR", "str", None),
    "config_repo": ("NIXFLEET_NIXCFG", "str", None),
    "ssh_key_file": ("NIXFLEET_SSH_KEY", "str", None),
    "known_hosts_file": ("NIXFLEET_KNOWN_HOSTS", "str", None),
    "interval": ("NIXFLEET_INTERVAL", "int", (1, 3600)),
    "log_level": ("NIXFLEET_LOG_LEVEL", "str", None),
    "hostname": ("NIXFLEET_HOSTNAME", "str", None),
    "location": ("NIXFLEET_LOCATION", "str", None),
    "device_type": ("NIXFLEET_DEVICE_TYPE", "str", None),
    "theme_color": ("NIXFLEET_THEME_COLOR", "str", None),
    "nixpkgs_version": ("NIXFLEET_NIXPKGS_VERSION", "str", None),
    "state_dir": ("NIXFLEET_STATE_DIR", "str", None),
    "ca_file": ("NIXFLEET_CA_FILE", "str", None),
    "platform": ("NIXFLEET_PLATFORM", "str", None),
    "rebuild_command": ("NIXFLEET_REBUILD_COMMAND", "list", None),
    "switch_launcher": ("NIXFLEET_SWITCH_LAUNCHER", "str", None),
    "privileged_dir": ("NIXFLEET_PRIVILEGED_DIR", "str", None),
    "ping_interval": ("NIXFLEET_PING_INTERVAL", "int", (1, 3600)),
    "ping_timeout": ("NIXFLEET_PING_TIMEOUT", "int", (2, 7200)),
    "handshake_timeout": ("NIXFLEET_HANDSHAKE_TIMEOUT", "int", (1, 600)),
    "backoff_max": ("NIXFLEET_BACKOFF_MAX", "int", (1, 3600)),
    "git_timeout": ("NIXFLEET_GIT_TIMEOUT", "int", (1, 86400)),
    "git_author_name": ("NIXFLEET_GIT_AUTHOR_NAME", "str", None),
    "git_author_email": ("NIXFLEET_GIT_AUTHOR_EMAIL", "str", None),
    "update_attempts": ("NIXFLEET_UPDATE_ATTEMPTS", "int", (1, 100)),
    "agent_input": ("NIXFLEET_AGENT_INPUT", "str", None),
    "outbox_max": ("NIXFLEET_OUTBOX_MAX", "int", (100, 1_000_000)),
    "stop_grace": ("NIXFLEET_STOP_GRACE", "int", (0, 600)),
    "restart_exit_code": ("NIXFLEET_RESTART_EXIT_CODE", "int", (0, 255)),
    "op_log_max_mb": ("NIXFLEET_OP_LOG_MAX_MB", "int", (1, 10240)),
    "privileged_timeout": ("NIXFLEET_PRIVILEGED_TIMEOUT", "int", (1, 604800)),  # root reads it too
}
ENV_VARS = {key: spec[0] for key, spec in _SPECS.items()}
_UNITS = {"outbox_max": "messages", "op_log_max_mb": "MiB", "update_attempts": "attempts",
          "restart_exit_code": "an exit status"}


@dataclass(frozen=True)
class Config:
    url: str
    token: Secret = field(repr=False)
    hostname: str
    state_dir: Path
    repo_dir: Path
    repo_url: str = ""
    branch: str = "main"
    config_repo: str = ""
    token_file: str = ""
    ssh_key_file: str = ""
    known_hosts_file: str = ""
    interval: int = 5
    log_level: str = "info"
    location: str = "home"
    device_type: str = "desktop"
    theme_color: str = ""
    nixpkgs_version: str = ""
    ca_file: str = ""
    platform: str = "nixos"
    rebuild_command: tuple[str, ...] = ("nixos-rebuild",)
    switch_launcher: str = "detached"
    privileged_dir: Path = Path("/var/lib/nixfleet-agent-privileged")
    ping_interval: int = 10
    ping_timeout: int = 30
    handshake_timeout: int = 10
    backoff_max: int = 60
    git_timeout: int = 300
    git_author_name: str = "nixfleet-agent"
    git_author_email: str = ""
    update_attempts: int = 5
    agent_input: str = DEFAULT_AGENT_INPUT
    outbox_max: int = 10000
    stop_grace: int = 3
    restart_exit_code: int = 101
    op_log_max_mb: int = 50  # each operation log is cut here (a visible marker), 20 are kept
    privileged_timeout: int = 7200  # seconds: root ends a privileged run then; the agent waits a bit longer
    config_file: str = ""
    guard: guard_settings.Guard = field(default_factory=guard_settings.Guard)  # [preflight], [retention]
    visibility: visibility_settings.Settings = field(default_factory=visibility_settings.Settings)
    health: HealthSettings = HEALTH_DISABLED

    @property
    def isolated(self) -> bool:
        """Isolated mode: the agent owns its clone of ``repo_url`` (upstream: REPO_URL non-empty)."""
        return bool(self.repo_url)

    @property
    def host_type(self) -> str:
        return "macos" if is_darwin() else "nixos"


class _Sources:
    """Looks a key up in CLI, env and file (in that order), remembering where the value came from."""

    def __init__(self, cli: Mapping[str, str], env: Mapping[str, str], file: Mapping[str, Any], path: str) -> None:
        self.cli, self.env, self.file, self.path = cli, env, file, path

    def get(self, key: str) -> tuple[Any, str] | None:
        if key in self.cli and self.cli[key] is not None:
            return self.cli[key], "--" + key.replace("_", "-")
        var = ENV_VARS.get(key)
        if var and self.env.get(var, "") != "":
            return self.env[var], var
        if key in self.file:
            return self.file[key], f"{key} (in {self.path})"
        return None


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _read_toml(path: str, problems: list[str]) -> dict[str, Any]:
    tomllib = _toml()
    try:
        data = tomllib.loads(read_text(path, CONFIG_FILE_MAX))
    except LocalFileError as exc:
        problems.append(f"config file: {exc}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config file: '{path}' is not valid TOML: {exc}")
        return {}
    for key in list(data):
        # tables are parsed in guard/settings.py, visibility/settings.py and health/settings.py
        if key not in _SPECS and key not in guard_settings.TABLES and key not in visibility_settings.TABLES \
                and key != "health":
            hint = " (the token is never read from the config file; use token_file)" if key == "token" else ""
            problems.append(f"{key} (in {path}): unknown setting{hint}")
            del data[key]
    return data


def _convert(key: str, raw: Any, where: str, problems: list[str]) -> Any:
    _, kind, bounds = _SPECS[key]
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            problems.append(f"{where}: must be an integer (got {_show(raw)!r})")
            return None
        try:
            value = int(str(raw).strip(), 10)
        except ValueError:
            problems.append(f"{where}: must be an integer number of {_UNITS.get(key, 'seconds')} (got {_show(raw)!r})")
            return None
        if bounds and not bounds[0] <= value <= bounds[1]:
            problems.append(f"{where}: must be between {bounds[0]} and {bounds[1]} (got {_show(raw)!r})")
            return None
        return value
    if kind == "list":
        if isinstance(raw, str):
            import shlex  # only string-valued list keys need it

            try:
                parts = shlex.split(raw)
            except ValueError as exc:
                problems.append(f"{where}: cannot split into words: {exc} (got {_show(raw)!r})")
                return None
        elif isinstance(raw, list) and all(isinstance(p, str) for p in raw):
            parts = list(raw)
        else:
            problems.append(f"{where}: must be a list of strings (got {_show(raw)!r})")
            return None
        if not parts or not parts[0]:
            problems.append(f"{where}: must name a program (got {_show(raw)!r})")
            return None
        return tuple(parts)
    if not isinstance(raw, str):
        problems.append(f"{where}: must be a string (got {_show(raw)!r})")
        return None
    return raw.strip()


def _resolve_token(src: _Sources, env: Mapping[str, str], problems: list[str]) -> tuple[Secret, str]:
    if env.get("NIXFLEET_TOKEN", "") != "":
        token = env["NIXFLEET_TOKEN"].strip()
        if not _token_ok(token):
            problems.append("NIXFLEET_TOKEN: contains a control character (CR/LF would inject a header)")
        return Secret(token), ""
    found = src.get("token_file")
    if found is not None:
        path, where = found
        if not isinstance(path, str) or not path:
            problems.append(f"{where}: must be a file path (got {_show(path)!r})")
            return Secret(""), ""
    elif env.get("CREDENTIALS_DIRECTORY") and Path(env["CREDENTIALS_DIRECTORY"], "token").exists():
        path, where = str(Path(env["CREDENTIALS_DIRECTORY"], "token")), "$CREDENTIALS_DIRECTORY/token"
    else:
        problems.append(
            "NIXFLEET_TOKEN: required; set NIXFLEET_TOKEN, NIXFLEET_TOKEN_FILE (token_file) "
            "or provide the systemd credential 'token'"
        )
        return Secret(""), ""
    if not os.path.isabs(path):
        return Secret(""), path  # refused with the other relative paths, not read from the cwd
    try:
        token = read_token_file(path)
    except LocalFileError as exc:
        problems.append(f"{where}: cannot read token file '{path}': {exc.reason}")
        return Secret(""), path
    if not token:
        problems.append(f"{where}: token file '{path}' contains no token")
    elif not _token_ok(token):
        problems.append(f"{where}: token in '{path}' contains a control character (CR/LF would inject a header)")
    return Secret(token), path


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. ws://[::1/ws (an unclosed IPv6 bracket)
        return f"not a usable URL: {exc}"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return "must be a ws:// or wss:// URL with a host"
    try:
        _ = parts.port  # raises ValueError for an out-of-range port
    except ValueError:
        return "invalid port"
    return None


def _token_ok(token: str) -> bool:
    """A token goes into an HTTP header: printable ASCII only, no CR/LF or other controls."""
    return all(0x20 < ord(c) < 0x7F for c in token)


def load(argv_overrides: Mapping[str, str], env: Mapping[str, str]) -> Config:
    """Build a validated Config or raise ConfigError listing every problem."""
    problems: list[str] = []
    cli = dict(argv_overrides)
    config_path = cli.pop("config", None) or env.get("NIXFLEET_CONFIG", "")
    file_values = _read_toml(config_path, problems) if config_path else {}
    health = parse_health(file_values.pop("health", None))
    problems += [f"{p} (in {config_path})" for p in health.problems]
    src = _Sources(cli, env, file_values, config_path)

    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key in _SPECS:
        found = src.get(key)
        if found is None:
            continue
        raw, source = found
        value = _convert(key, raw, source, problems)
        if value is not None:
            values[key], origin[key] = value, source

    def where(key: str) -> str:
        return origin.get(key, ENV_VARS[key])

    url = values.get("url", "")
    if not url:
        problems.append("NIXFLEET_URL: required (the dashboard WebSocket URL, e.g. wss://fleet.example.com/ws)")
    else:
        problem = _url_problem(url)
        if problem:
            problems.append(f"{where('url')}: {problem} (got {_show(url)!r})")

    level = values.get("log_level", "info").lower()
    if level == "warning":
        level = "warn"
    if level not in LOG_LEVELS:
        problems.append(f"{where('log_level')}: must be one of {', '.join(LOG_LEVELS)} (got {_show(values['log_level'])!r})")

    hostname = values.get("hostname") or detect_hostname()
    if not HOSTNAME_RE.fullmatch(hostname or ""):
        problems.append(f"{where('hostname')}: not a usable host name (got {_show(hostname)!r})")

    for key in PATH_KEYS:
        value = values.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            problems.append(f"{where(key)}: must be an absolute path (got {_show(value)!r})")

    platform_name = values.get("platform") or detect_platform()
    if platform_name not in PLATFORMS:
        problems.append(f"{where('platform')}: must be one of {', '.join(PLATFORMS)} (got {_show(platform_name)!r})")
    launcher = values.get("switch_launcher", "detached")
    if launcher not in LAUNCHERS:
        problems.append(f"{where('switch_launcher')}: must be one of {', '.join(LAUNCHERS)} (got {_show(launcher)!r})")
    default_rebuild = {"nixos": "nixos-rebuild", "darwin": "darwin-rebuild"}.get(platform_name, "home-manager")

    ping_interval = values.get("ping_interval", 10)
    ping_timeout = values.get("ping_timeout", 30)
    if ping_timeout <= ping_interval:
        problems.append(
            f"{where('ping_timeout')}: must be greater than ping_interval ({ping_interval}) (got {ping_timeout!r})"
        )

    state_dir = values.get("state_dir") or default_state_dir(env)
    repo_url = values.get("repo_url", "")
    config_repo = values.get("config_repo", "")
    repo_dir = values.get("repo_dir", "")
    if repo_url and config_repo:
        problems.append(
            f"{where('config_repo')}: set either repo_url (the agent's own clone) or the deprecated "
            f"config_repo (your checkout), not both (got config_repo={_show(config_repo)!r})"
        )
    if not repo_url and config_repo:
        repo_dir = config_repo  # the deprecated legacy name wins in legacy mode (upstream bug 13)
    if not repo_dir:
        if repo_url:
            repo_dir = str(Path(state_dir) / "repo")
        else:
            problems.append("NIXFLEET_REPO_URL: NIXFLEET_REPO_URL or NIXFLEET_REPO_DIR is required")

    ca_file = values.get("ca_file", "")
    if ca_file and not os.access(ca_file, os.R_OK):
        problems.append(f"{where('ca_file')}: cannot read CA file (got {_show(ca_file)!r})")

    agent_input = values.get("agent_input") or DEFAULT_AGENT_INPUT
    if not _FLAKE_INPUT.fullmatch(agent_input):
        problems.append(f"{where('agent_input')}: not a flake input name (got {_show(agent_input)!r})")

    token, token_path = _resolve_token(src, env, problems)
    guard = guard_settings.parse(file_values, config_path, problems)
    visibility = visibility_settings.parse(file_values, env, config_path, problems)

    if problems:
        raise ConfigError(problems)

    return Config(
        url=url,
        token=token,
        token_file=token_path,
        hostname=hostname,
        state_dir=Path(state_dir),
        repo_dir=Path(repo_dir),
        repo_url=repo_url,
        branch=values.get("branch") or "main",
        config_repo=config_repo,
        ssh_key_file=values.get("ssh_key_file")
        or (str(Path(env["CREDENTIALS_DIRECTORY"], "ssh-key")) if env.get("CREDENTIALS_DIRECTORY")
            and Path(env["CREDENTIALS_DIRECTORY"], "ssh-key").exists() else ""),
        known_hosts_file=values.get("known_hosts_file", ""),
        interval=values.get("interval", 5),
        log_level=level,
        location=values.get("location") or "home",
        device_type=values.get("device_type") or "desktop",
        theme_color=values.get("theme_color", ""),
        nixpkgs_version=values.get("nixpkgs_version", ""),
        ca_file=ca_file,
        platform=platform_name,
        rebuild_command=values.get("rebuild_command") or (default_rebuild,),
        switch_launcher=launcher,
        privileged_dir=Path(values.get("privileged_dir") or "/var/lib/nixfleet-agent-privileged"),
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        handshake_timeout=values.get("handshake_timeout", 10),
        backoff_max=values.get("backoff_max", 60),
        git_timeout=values.get("git_timeout", 300),
        git_author_name=values.get("git_author_name") or "nixfleet-agent",
        git_author_email=values.get("git_author_email") or f"nixfleet-agent@{hostname}",
        update_attempts=values.get("update_attempts", 5),
        agent_input=agent_input,
        outbox_max=values.get("outbox_max", 10000),
        stop_grace=values.get("stop_grace", 3),
        restart_exit_code=values.get("restart_exit_code", 0 if is_darwin() else 101),
        op_log_max_mb=values.get("op_log_max_mb", 50),
        privileged_timeout=values.get("privileged_timeout", 7200),
        config_file=config_path,
        guard=guard,
        visibility=visibility,
        health=health,
    )


def state_dir_only(argv_overrides: Mapping[str, str], env: Mapping[str, str]) -> Path:
    """The state dir without full validation, for ``status`` on a host whose config is broken."""
    cli = dict(argv_overrides)
    if cli.get("state_dir"):
        return Path(cli["state_dir"])
    if env.get("NIXFLEET_STATE_DIR"):
        return Path(env["NIXFLEET_STATE_DIR"])
    path = cli.get("config") or env.get("NIXFLEET_CONFIG", "")
    if path:
        tomllib = _toml()
        try:
            value = tomllib.loads(read_text(path, CONFIG_FILE_MAX)).get("state_dir")
            if isinstance(value, str) and value:
                return Path(value)
        except (LocalFileError, tomllib.TOMLDecodeError):
            pass
    return Path(default_state_dir(env))

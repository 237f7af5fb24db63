"""The ``[health]`` table of the agent's TOML, validated once for the agent and for root.

Root reads the same file the NixOS module rendered (root-owned, in the store), so what root checks
is decided by the module's configuration, never by the agent. A TOML without a ``[health]`` table
(a hand-written file, an older module) means *disabled*: the modules render the table with
``enable = true`` by default, so module users get health-gated switches and nothing changes for
configurations that never asked for them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

ON_FAILURE = ("rollback", "report")
GRACE_BOUNDS = (5, 3600)
_UNIT = re.compile(r"[A-Za-z0-9:_.@\\-]{1,255}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?")
FIELDS = ("enable", "grace_period", "units", "no_failed_units", "ignore_failed_units", "http", "tcp",
          "commands", "require_reconnect", "on_failure", "allow_remote")


@dataclass(frozen=True)
class HttpCheck:
    url: str
    status: int = 200


@dataclass(frozen=True)
class TcpCheck:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CommandCheck:
    argv: tuple[str, ...]
    user: str = ""  # "" = whoever runs the checks (root on NixOS, the agent's user in Home Manager)


@dataclass(frozen=True)
class HealthSettings:
    enable: bool = False
    grace_period: int = 120
    units: tuple[str, ...] = ()
    no_failed_units: bool = True
    ignore_failed_units: tuple[str, ...] = ()
    http: tuple[HttpCheck, ...] = ()
    tcp: tuple[TcpCheck, ...] = ()
    commands: tuple[CommandCheck, ...] = ()
    require_reconnect: bool = True
    on_failure: str = "rollback"
    allow_remote: bool = False
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def rollback(self) -> bool:
        return self.on_failure == "rollback"


DISABLED = HealthSettings()


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address. Why the default: a check against another machine turns
    that machine's outage into a rollback of every host that checks it."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse(table: Any, where: str = "health") -> HealthSettings:
    """Settings from the ``[health]`` table (None: disabled). Problems are collected in
    ``problems`` (``health.<key>: why (got ...)``); the caller reports them its own way."""
    if table is None:
        return DISABLED
    problems: list[str] = []
    if not isinstance(table, dict):
        return HealthSettings(problems=(f"{where}: must be a table (got {type(table).__name__})",))
    for key in sorted(set(table) - set(FIELDS)):
        problems.append(f"{where}.{key}: unknown setting")

    def boolean(key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            problems.append(f"{where}.{key}: must be true or false (got {value!r})")
            return default
        return value

    def strings(key: str, rule: re.Pattern[str], what: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{where}.{key}: must be a list of strings (got {value!r})")
            return ()
        for item in value:
            if not rule.fullmatch(item) or item.startswith("-"):
                problems.append(f"{where}.{key}: not a {what} (got {item!r})")
        return tuple(v for v in value if rule.fullmatch(v) and not v.startswith("-"))

    enable = boolean("enable", True)
    grace = table.get("grace_period", 120)
    if isinstance(grace, bool) or not isinstance(grace, int) or not GRACE_BOUNDS[0] <= grace <= GRACE_BOUNDS[1]:
        problems.append(f"{where}.grace_period: must be an integer number of seconds in "
                        f"{GRACE_BOUNDS[0]}-{GRACE_BOUNDS[1]} (got {grace!r})")
        grace = 120
    on_failure = table.get("on_failure", "rollback")
    if on_failure not in ON_FAILURE:
        problems.append(f"{where}.on_failure: must be one of {', '.join(ON_FAILURE)} (got {on_failure!r})")
        on_failure = "rollback"
    allow_remote = boolean("allow_remote", False)
    return HealthSettings(
        enable=enable, grace_period=grace,
        units=strings("units", _UNIT, "unit name"),
        no_failed_units=boolean("no_failed_units", True),
        ignore_failed_units=strings("ignore_failed_units", _UNIT, "unit name"),
        http=_http(table.get("http", []), where, allow_remote, problems),
        tcp=_tcp(table.get("tcp", []), where, allow_remote, problems),
        commands=_commands(table.get("commands", []), where, problems),
        require_reconnect=boolean("require_reconnect", True),
        on_failure=on_failure, allow_remote=allow_remote, problems=tuple(problems))


def _http(value: Any, where: str, allow_remote: bool, problems: list[str]) -> tuple[HttpCheck, ...]:
    if not isinstance(value, list):
        problems.append(f"{where}.http: must be a list of tables {{url, status}} (got {value!r})")
        return ()
    out = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) - {"url", "status"} or not isinstance(entry.get("url"), str):
            problems.append(f"{where}.http: each entry is {{url = \"http://127.0.0.1:8080/\", status = 200}} "
                            f"(got {entry!r})")
            continue
        url, status = entry["url"], entry.get("status", 200)
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            problems.append(f"{where}.http: not a usable URL: {exc} (got {url!r})")
            continue
        if parts.scheme not in ("http", "https") or not host:
            problems.append(f"{where}.http: must be an http:// or https:// URL with a host (got {url!r})")
            continue
        if not allow_remote and not is_loopback(host):
            problems.append(f"{where}.http: {host} is not a loopback address; checks stay on this host "
                            f"unless allow_remote = true (got {url!r})")
            continue
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            problems.append(f"{where}.http: status must be an HTTP status 100-599 (got {status!r})")
            continue
        out.append(HttpCheck(url, status))
    return tuple(out)


def _tcp(value: Any, where: str, allow_remote: bool, problems: list[str]) -> tuple[TcpCheck, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}.tcp: must be a list of \"host:port\" strings (got {value!r})")
        return ()
    out = []
    for item in value:
        host, _, port = item.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"{where}.tcp: not host:port (got {item!r})")
            continue
        if not allow_remote and not is_loopback(host):
            problems.append(f"{where}.tcp: {host} is not a loopback address; checks stay on this host "
                            f"unless allow_remote = true (got {item!r})")
            continue
        out.append(TcpCheck(host, int(port)))
    return tuple(out)


def _commands(value: Any, where: str, problems: list[str]) -> tuple[CommandCheck, ...]:
    if not isinstance(value, list):
        problems.append(f"{where}.commands: must be a list of tables {{argv, user}} (got {value!r})")
        return ()
    out = []
    for entry in value:
        argv = entry.get("argv") if isinstance(entry, dict) else None
        user = entry.get("user", "") if isinstance(entry, dict) else ""
        if (not isinstance(entry, dict) or set(entry) - {"argv", "user"} or not isinstance(argv, list) or not argv
                or not all(isinstance(a, str) and a and "\0" not in a for a in argv)):
            problems.append(f"{where}.commands: each entry is {{argv = [\"/abs/program\", ...], user = \"name\"}} "
                            f"(got {entry!r})")
            continue
        if not argv[0].startswith("/"):
            problems.append(f"{where}.commands: the program must be an absolute path (got {argv[0]!r})")
            continue
        if not isinstance(user, str) or user and not _USER.fullmatch(user):
            problems.append(f"{where}.commands: user must be a user name (got {user!r})")
            continue
        out.append(CommandCheck(tuple(argv), user))
    return tuple(out)

"""The wire format: exact message shapes the upstream dashboard expects, and inbound validation.

Builders produce the full field sets (explicit ``null`` where upstream sends null, omitted where
upstream omits empty values) so the dashboard's UI and lifecycle work unchanged. Inbound parsing never
raises anything but ``ProtocolError``: a bad frame is logged and ignored, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..redact import redact, without_userinfo

MAX_LINE_BYTES = 16 * 1024
MAX_MESSAGE_BYTES = 4 * 1024
MAX_INBOUND_BYTES = 1024 * 1024
REJECT_REASON = "command already running"
COMPARTMENTS = ("git", "lock", "system", "tests")

# The upstream release whose agent protocol this agent implements (markus-barta/nixfleet VERSION at
# the commit the protocol reference describes). The upstream dashboard reads the register's
# ``agent_version`` as "which of my releases does this agent speak" - it marks an agent outdated
# unless the string equals its own ``Version`` - so that field carries this level, not our package
# version. What actually runs is reported next to it: ``implementation`` / ``implementation_version``
# (ignored by the Go dashboard, which decodes with plain ``json.Unmarshal``), ``source_commit``,
# ``store_path``, ``binary_hash``, and ``nixfleet-agent --version``. Raise it only together with the
# protocol changes of the new upstream release.
UPSTREAM_PROTOCOL_VERSION = "3.1.5"
IMPLEMENTATION = "nixfleet-agent-python"


class ProtocolError(Exception):
    """An inbound frame we ignore; ``kind`` is the message type if one was readable."""

    def __init__(self, reason: str, kind: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def cut(text: str, limit: int = MAX_LINE_BYTES) -> str:
    """Cut to ``limit`` UTF-8 bytes with a visible marker, so no frame grows without bound."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", "ignore")
    return f"{kept} …[truncated {len(data) - len(kept.encode('utf-8'))} bytes]"


# One encoder for every frame: json.dumps with non-default arguments builds a new one per call,
# which is a sixth of the cost of an output line.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(kind: str, payload: dict[str, Any]) -> str:
    """The frame text; redacted here because every message leaves the process through this."""
    return redact(_ENCODER.encode({"type": kind, "payload": payload}))


def _optional(payload: dict[str, Any], **fields: str) -> dict[str, Any]:
    for key, value in fields.items():
        if value:
            payload[key] = value
    return payload


def register(
    *,
    hostname: str,
    host_type: str,
    own_version: str,
    os_version: str,
    nixpkgs_version: str,
    generation: str,
    theme_color: str,
    heartbeat_interval: int,
    location: str,
    device_type: str,
    repo_url: str,
    repo_dir: str,
    source_commit: str,
    store_path: str,
    binary_hash: str,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "hostname": hostname,
        "host_type": host_type,
        "agent_version": UPSTREAM_PROTOCOL_VERSION,
        "os_version": os_version,
        "nixpkgs_version": nixpkgs_version,
        "generation": generation,
        "theme_color": theme_color,
        "heartbeat_interval": heartbeat_interval,
        "location": location,
        "device_type": device_type,
        "repo_url": without_userinfo(repo_url),  # upstream stores it and shows it to every browser
        "repo_dir": repo_dir,
        "implementation": IMPLEMENTATION,
        "implementation_version": own_version,
    }
    return _optional(payload, source_commit=source_commit, store_path=store_path, binary_hash=binary_hash)


def heartbeat(
    *,
    generation: str,
    nixpkgs_version: str,
    pending_command: str | None,
    command_pid: int | None,
    metrics: dict[str, float] | None,
    update_status: dict[str, dict[str, str]],
    source_commit: str,
    store_path: str,
    binary_hash: str,
    lock_hash: str,
) -> dict[str, Any]:
    status = {name: _compartment(update_status.get(name)) for name in COMPARTMENTS}
    payload: dict[str, Any] = {
        "generation": generation,
        "nixpkgs_version": nixpkgs_version,
        "pending_command": pending_command or None,
        "command_pid": command_pid if command_pid else None,
        "metrics": metrics,
        "update_status": status,
    }
    return _optional(
        payload, source_commit=source_commit, store_path=store_path, binary_hash=binary_hash, lock_hash=lock_hash
    )


def _compartment(value: dict[str, str] | None) -> dict[str, str]:
    value = value or {}
    return {
        "status": str(value.get("status", "")),
        "message": cut(str(value.get("message", "")), MAX_MESSAGE_BYTES),
        "checked_at": str(value.get("checked_at", "")),
    }


def output(command: str, line: str, stream: str = "stdout") -> dict[str, Any]:
    stream = "stderr" if stream == "stderr" else "stdout"
    return {"line": cut(line), "stream": stream, "command": command, "is_error": stream == "stderr"}


def status(command: str, status_value: str, exit_code: int, message: str = "", generation: str = "") -> dict[str, Any]:
    payload: dict[str, Any] = {"status": status_value, "command": command, "exit_code": int(exit_code)}
    return _optional(payload, message=cut(message, MAX_MESSAGE_BYTES), generation=generation)


def command_rejected(current_command: str, current_pid: int | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"reason": REJECT_REASON}
    if current_command:
        payload["current_command"] = current_command
    if current_pid:
        payload["current_pid"] = int(current_pid)
    return payload


def operation_progress(phase: str, current: int, total: int, status_value: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"current": int(current), "total": int(total)}
    if phase == "tests":
        entry["results"] = None
    entry["status"] = status_value
    return {"progress": {phase: entry}}


def test_progress(current: int, total: int, passed: int, running: bool, result: str) -> dict[str, Any]:
    return {"current": int(current), "total": int(total), "passed": int(passed), "running": bool(running), "result": result}


@dataclass(frozen=True)
class Registered:
    host_id: str


@dataclass(frozen=True)
class Command:
    name: str


@dataclass(frozen=True)
class KillCommand:
    signal: str
    pid: int


Inbound = Registered | Command | KillCommand


def parse(text: str | bytes) -> Inbound:
    """Validate one dashboard frame; raise ProtocolError naming the type and the reason."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("frame is not UTF-8") from None
    if len(text) > MAX_INBOUND_BYTES:
        raise ProtocolError(f"frame too large ({len(text)} chars)")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("not JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing or non-string 'type'")
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise ProtocolError("payload is not an object", kind)
    if kind == "registered":
        host_id = payload.get("host_id", "")
        if not isinstance(host_id, str):
            raise ProtocolError("host_id is not a string", kind)
        return Registered(host_id)
    if kind == "command":
        name = payload.get("command")
        if not isinstance(name, str) or not name.strip():
            raise ProtocolError("command is not a non-empty string", kind)
        if len(name) > 200 or not name.isprintable():
            raise ProtocolError("command name is not a short printable string", kind)
        return Command(name.strip())
    if kind == "kill_command":
        sig = payload.get("signal", "SIGTERM")
        pid = payload.get("pid", 0)
        if not isinstance(sig, str) or len(sig) > 32:
            raise ProtocolError("signal is not a short string", kind)
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0 or pid > 2**31:
            raise ProtocolError("pid is not a non-negative integer", kind)
        return KillCommand(sig, pid)
    raise ProtocolError("unknown message type", kind)

"""Shared test helpers: the agent as a real subprocess, a fleet git repo, bounded waits.

Stable API used by every test tier (documented in tests/conftest.py):

* ``wait_for(predicate, timeout=5.0, what="...")`` - poll until truthy, return the value or fail.
* ``AgentProcess`` - ``nixfleet-agent`` started with ``python -m nixfleet_agent.cli``; stderr goes to a
  file (``.log_path``), ``.log()`` returns it, ``.events(name)`` parses key=value lines,
  ``.wait_event(name)``, ``.stop()`` (SIGTERM, returns the exit code), ``.kill()``.
* ``make_fleet_repo(path, hostname)`` - a git repo with ``flake.nix``, ``flake.lock`` and one commit.
* ``agent_env(dashboard, state_dir, **overrides)`` - a minimal environment for the agent.
* ``python_env(env)`` - ``env`` plus the ``PYTHONPATH`` a child Python needs to import what this test
  process imports (``run_cli`` and ``AgentProcess`` apply it to every environment they are given).
* ``parse_log_line(line)`` - ``{"level": ..., "component": ..., "event": ..., ...}``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
AGENT_SRC = REPO_ROOT / "agent"
TEST_TOKEN = "test-token-7f3a9c"
TEST_HOST = "test-host"


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition", interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="Fleet Admin", GIT_AUTHOR_EMAIL="admin@example.test",
               GIT_COMMITTER_NAME="Fleet Admin", GIT_COMMITTER_EMAIL="admin@example.test",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(cwd))
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def make_fleet_repo(path: Path, hostname: str = TEST_HOST) -> Path:
    """A fleet repository as the agent expects it: flake, lock, per-host tests dir, one commit on main."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "--initial-branch=main")
    (path / "flake.nix").write_text('{ outputs = { self }: { }; }\n')
    (path / "flake.lock").write_text('{\n  "nodes": { "root": {} },\n  "root": "root",\n  "version": 7\n}\n')
    tests = path / "hosts" / hostname / "tests"
    tests.mkdir(parents=True)
    (tests / ".keep").write_text("")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial fleet config")
    return path


def package_root() -> Path:
    """The directory this test process imports ``nixfleet_agent`` from (the checkout's ``agent/``, or
    the installed site-packages under nixpkgs' check phase), so a child runs the same code."""
    spec = importlib.util.find_spec("nixfleet_agent")
    if spec is None or not spec.submodule_search_locations:
        return AGENT_SRC
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


def python_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus the ``PYTHONPATH`` a child agent needs.

    nixpkgs' pytestCheckHook runs the tests with the bare interpreter: the package and its
    dependencies (websocket-client) reach Python only through ``PYTHONPATH``. A child whose
    environment drops it, or replaces it with just the source directory, dies with
    ModuleNotFoundError there although it works wherever the dependencies sit in site-packages.
    So: the package root first, then the caller's entries, then this process's."""
    entries = [str(package_root())]
    for raw in (env.get("PYTHONPATH", ""), os.environ.get("PYTHONPATH", "")):
        entries += [p for p in raw.split(os.pathsep) if p]
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys(entries))}


NIX_PASSTHROUGH = ("NIX_REMOTE", "NIX_CONF_DIR", "NIX_STORE_DIR", "NIX_STATE_DIR")


def agent_env(url: str, state_dir: Path, *, token: str | None = TEST_TOKEN, **overrides: str) -> dict[str, str]:
    """Environment for an agent under test: fast cadence, private state dir, nothing inherited but PATH (and which Nix store)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(state_dir.parent),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "NIXFLEET_URL": url,
        "NIXFLEET_HOSTNAME": TEST_HOST,
        "NIXFLEET_STATE_DIR": str(state_dir),
        "NIXFLEET_INTERVAL": "1",
        "NIXFLEET_PING_INTERVAL": "1",
        "NIXFLEET_PING_TIMEOUT": "3",
        "NIXFLEET_BACKOFF_MAX": "2",
        "NIXFLEET_LOG_LEVEL": "debug",
        "NIXFLEET_PLATFORM": "nixos",
    }
    if token is not None:
        env["NIXFLEET_TOKEN"] = token
    # which Nix store to use (dev/test gives a non-root user without a daemon a store of its own)
    env.update({k: os.environ[k] for k in NIX_PASSTHROUGH if k in os.environ})
    env.update({k: v for k, v in overrides.items() if v is not None})
    return python_env(env)


def parse_log_line(line: str) -> dict[str, str]:
    """Parse one ``key=value`` log line (double-quoted values with backslash escapes)."""
    fields: dict[str, str] = {}
    try:
        parts = shlex.split(line, posix=True)
    except ValueError:
        return fields
    for part in parts:
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    return fields


class AgentProcess:
    """The agent as a real process, as a service manager would run it."""

    def __init__(self, env: Mapping[str, str], args: Sequence[str] = (), log_path: Path | None = None,
                 cwd: Path | None = None) -> None:
        self.env = python_env(env)
        self.args = list(args)
        state = Path(self.env.get("NIXFLEET_STATE_DIR", "."))
        self.log_path = log_path or state.parent / f"agent-{time.monotonic_ns()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nixfleet_agent.cli", *self.args],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log_file,
            cwd=str(cwd) if cwd else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, str]]:
        out = []
        for line in self.log().splitlines():
            fields = parse_log_line(line)
            if fields and (name is None or fields.get("event") == name):
                out.append(fields)
        return out

    def wait_event(self, name: str, timeout: float = 5.0, count: int = 1) -> list[dict[str, str]]:
        def enough() -> list[dict[str, str]] | None:
            found = self.events(name)
            return found if len(found) >= count else None

        try:
            return wait_for(enough, timeout, f"agent log event {name!r} x{count}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- agent log ---\n{self.tail()}") from None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log().splitlines()[-lines:])
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close()
        return self.proc.returncode

    def kill(self) -> int:
        return self.stop(timeout=5, sig=signal.SIGKILL)

    def wait(self, timeout: float = 10.0) -> int:
        code = self.proc.wait(timeout)
        self._close()
        return code

    def _close(self) -> None:
        if self.proc.stdout:
            self.proc.stdout.close()
        if not self._log_file.closed:
            self._log_file.close()


def run_cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``nixfleet-agent <args>`` to completion (for check/status/--version/config errors)."""
    return subprocess.run([sys.executable, "-m", "nixfleet_agent.cli", *args], env=python_env(env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def toml_dumps(settings: dict[str, object], _table: str = "") -> str:
    """TOML for the agent's settings (str, int, bool, list of str; tables of those after the flat
    keys, nested ones such as ``[reboot.window]``, and lists of tables such as ``[[health.http]]``),
    keys sorted like pkgs.formats.toml renders them, so generated and golden config files compare
    byte for byte."""
    def scalar(key: str, value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "[" + ", ".join(json.dumps(v) for v in value) + "]"
        raise TypeError(f"config key {key}: cannot render {value!r} as TOML")

    tables = {k: v for k, v in settings.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in settings.items()
              if isinstance(v, list) and v and all(isinstance(e, dict) for e in v)}
    lines = [f"{key} = {scalar(key, settings[key])}" for key in sorted(settings)
             if key not in tables and key not in arrays]
    text = "\n".join(lines) + "\n" if lines else ""
    for key in sorted(tables):
        text += f"\n[{_table}{key}]\n" + toml_dumps(tables[key], f"{_table}{key}.")  # type: ignore[arg-type]
    for key in sorted(arrays):
        for entry in arrays[key]:  # type: ignore[union-attr]
            text += f"\n[[{_table}{key}]]\n" + toml_dumps(entry, f"{_table}{key}.")
    return text

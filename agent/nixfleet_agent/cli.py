"""``nixfleet-agent``: run (default), ``check``, ``status``, ``--version``, ``--help``.

Exit status: 0 ok, 1 check failed / runtime failure / ``status`` without a readable state directory,
2 configuration error (one line per problem, never a traceback; ``check`` too), 130 stopped by
Ctrl-C (SIGINT) in a terminal. ``--version`` keeps upstream's load-bearing first line ``nixfleet-agent <version>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import buildinfo, log
from .config import ENV_VARS, Config, ConfigError, load, state_dir_only

EXIT_CONFIG = 2

_OVERRIDES = ("config", "url", "hostname", "log_level", "state_dir", "repo_dir", "repo_url", "branch",
              "token_file", "interval")

_EPILOG = "environment / TOML keys:\n" + "\n".join(
    f"  {env:<28} {key}" for key, env in ENV_VARS.items()
) + "\n  NIXFLEET_TOKEN               (environment only; or token_file / $CREDENTIALS_DIRECTORY/token)\n" \
    "  NIXFLEET_CONFIG              path of the TOML file (same as --config)"


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's own formatter, sized like argparse sizes it, but without ``shutil``.

    argparse builds a formatter for every ``add_argument`` (to check the metavar), and each one asks
    ``shutil.get_terminal_size`` for its width: that import brings bz2 and lzma along (~0.6 MiB of
    RSS for as long as the agent runs). Same rule as shutil: ``$COLUMNS``, else stdout's terminal,
    else 80 columns.
    """
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return argparse.RawDescriptionHelpFormatter(prog, width=(columns if columns > 0 else 80) - 2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nixfleet-agent",
        description="Connects this host to a NixFleet dashboard and runs fleet commands on it.",
        epilog=_EPILOG,
        formatter_class=_help_formatter,
    )
    parser.add_argument("command", nargs="?", default="run", choices=("run", "check", "status"),
                        help="run the agent (default), check the configuration and connection, "
                             "or show what the agent last did")
    parser.add_argument("-v", "--version", "-version", action="store_true", help="print the version and source commit")
    parser.add_argument("--check", "-check", action="store_true", help="same as the 'check' subcommand (upstream flag)")
    parser.add_argument("--json", action="store_true", help="status: print JSON")
    for key in _OVERRIDES:
        parser.add_argument("--" + key.replace("_", "-"), dest=key, metavar=key.split("_")[-1].upper(),
                            help=f"overrides {ENV_VARS.get(key, 'NIXFLEET_CONFIG')}")
    return parser


def avoid_tls_libraries(url: str) -> None:
    """For a plain ``ws://`` dashboard, keep OpenSSL (libssl + libcrypto, ~5 MiB RSS) out of the process.

    websocket-client imports ``ssl`` and ``hashlib`` unconditionally, and ``hashlib`` prefers the
    OpenSSL-backed ``_hashlib``. Without TLS neither is needed: ``hashlib`` falls back to CPython's
    built-in SHA implementations and websocket-client records ``HAVE_SSL = False``. Marking the two
    modules as unavailable (``None`` in ``sys.modules``, the documented way to block an import) before
    the first import saves a quarter of the agent's idle memory. Never done for ``wss://``.
    """
    if not url.startswith("ws://"):
        return
    for name in ("ssl", "_ssl", "_hashlib"):
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None) -> int:
    """Ctrl-C before the agent's own handlers are in place (startup, ``check``) ends quietly with 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        log.end_terminal_echo()
        print("nixfleet-agent: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(f"nixfleet-agent {buildinfo.version()}")
        print(f"source_commit {buildinfo.source_commit()}")
        return 0
    overrides = {key: getattr(args, key) for key in _OVERRIDES if getattr(args, key) is not None}
    command = "check" if args.check else args.command
    if command == "status":
        return _status(overrides, args.json)
    try:
        cfg = load(overrides, os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"nixfleet-agent: config error: {problem}", file=sys.stderr)
        if command == "check":
            print(f"FAILED: configuration invalid ({len(exc.problems)} problem(s))")
        return EXIT_CONFIG
    os.environ.pop("NIXFLEET_TOKEN", None)  # held in cfg now: no child process inherits it
    log.setup(cfg.log_level)
    avoid_tls_libraries(cfg.url)
    if command == "check":
        return _check(cfg)
    from .agent import Agent

    try:
        agent = Agent(cfg)
    except OSError as exc:
        print(f"nixfleet-agent: cannot prepare state_dir {cfg.state_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    code = agent.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # worker threads of a finished command must not delay the exit the unit waits for


def _check(cfg: Config) -> int:
    from .link.dial import AuthError, describe, dial
    from .redact import redact

    url = redact(cfg.url)  # check output is a boundary too: no userinfo of the dashboard URL
    started = time.monotonic()
    try:
        ws = dial(cfg)
    except AuthError as exc:
        print(f"FAILED: {url} rejected the token (HTTP {exc.status})")
        return 1
    except Exception as exc:  # noqa: BLE001 - any failure is the verdict
        print(f"FAILED: cannot connect to {url}: {describe(exc)}")
        return 1
    latency = int((time.monotonic() - started) * 1000)
    try:
        ws.close(timeout=2)
    except Exception:  # noqa: BLE001
        pass
    print(f"OK: config valid; authenticated WebSocket to {url} as {cfg.hostname} ({latency} ms)")
    return 0


def _status(overrides: dict[str, str], as_json: bool) -> int:
    from .host.status import snapshot

    state_dir = state_dir_only(overrides, os.environ)
    problem = _unreadable(state_dir)
    if problem:
        print(f"nixfleet-agent: state directory {state_dir} {problem} "
              f"(from {_state_dir_source(overrides)}); nothing to show", file=sys.stderr)
        return 1
    state = snapshot(state_dir)
    from .health.agentside import bad_commits, status_lines

    state["bad_commits"], _ = bad_commits(state_dir)
    if as_json:
        print(json.dumps(state, indent=2, sort_keys=True, default=str))
        return 0
    print("\n".join([_human(state), *status_lines(state_dir)]))
    return 0


def _unreadable(state_dir: Path) -> str:
    """Why ``status`` cannot read ``state_dir``, or "" (it exists and may be listed)."""
    try:
        if not state_dir.is_dir():
            return "does not exist" if not state_dir.exists() else "is not a directory"
        os.listdir(state_dir)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc} (run as the agent's user or root)"
    return ""


def _state_dir_source(overrides: dict[str, str]) -> str:
    """The setting that chose the state directory, named so the user knows what to change."""
    if overrides.get("state_dir"):
        return "--state-dir"
    if os.environ.get("NIXFLEET_STATE_DIR"):
        return "NIXFLEET_STATE_DIR"
    config = overrides.get("config") or os.environ.get("NIXFLEET_CONFIG", "")
    if config:
        return f"state_dir in {config} or its default"
    return "the default; set state_dir / NIXFLEET_STATE_DIR / --state-dir to the agent's"


def _human(state: dict[str, Any]) -> str:
    """Render :func:`status.snapshot` (every field already of its declared type)."""
    lines = [f"state dir: {state['state_dir']}"]
    age = state.get("alive_age_seconds")
    lines.append("agent: " + ("no heartbeat recorded" if age is None else f"last heartbeat tick {age:.0f} s ago"))
    extras = state["extras"]
    lines.append(f"last registered with the dashboard: {extras.get('last_registration') or 'never'}")
    last = state.get("last_command")
    if last is not None:
        lines.append(
            f"last command: {last['command']} -> {last['status']} (exit {last['exit_code']})"
            + (f": {last['message']}" if last["message"] else "") + f" at {last['finished_at']}"
        )
    else:
        lines.append("last command: none recorded")
    for name, entry in state["compartments"].items():
        lines.append(f"  {name:<7} {entry['status'] or 'unknown':<9} {entry['message']}")
    from .visibility.statusview import lines as visibility_lines  # issue 16: reboot, drift

    lines.extend(visibility_lines(extras))
    if extras.get("repo_error"):
        lines.append(f"repository problem: {extras['repo_error']}")
    if state.get("logs"):
        lines.append(f"latest operation log: {Path(state['logs'][-1])}")
    for path in state.get("quarantined_records", []):
        lines.append(f"quarantined operation record: {path}")
    lines.extend(f"problem: {p}" for p in state.get("problems", []))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

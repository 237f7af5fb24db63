"""The root program's command line, and filling what it leaves out from the agent's rendered TOML."""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path

from .. import localfile, log
from ..config import CONFIG_FILE_MAX, DEFAULT_AGENT_INPUT
from ..guard import rootside
from ..health import settings as health_settings
from . import results, watch
from .request import REJECTED_EXIT

_log = log.get("privileged")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nixfleet-agent-privileged",
        description="Run one privileged switch request of the NixFleet agent (started by "
                    "nixfleet-agent-privileged.path as root).")
    add = parser.add_argument
    add("--request", type=Path, required=True, help="request file the agent writes (the only path of the agent's "
                                                      "root opens)")
    add("--out-dir", type=Path, required=True, help="root-owned directory for results")
    add("--state-dir", type=Path, help="root's private state: its clone, the last deployed commit "
                                       "(default: <out-dir>/../root)")
    add("--config", type=Path, help="the agent's TOML file as the NixOS module rendered it (root-owned): "
                                    "repo_url, branch, hostname, agent_input, known_hosts_file, config_repo "
                                    "for every option below not given")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--repo-url", help="the fleet repository root fetches itself (repoUrl)")
    where.add_argument("--legacy-repo", type=Path, help="deprecated configRepo checkout, trusted as its owner")
    add("--branch", help="branch of --repo-url that is published (default main)")
    add("--flake-attr", help="the only flake attribute this host may build (its hostname)")
    add("--ssh-key", type=Path, help="deploy key (default: $CREDENTIALS_DIRECTORY/ssh-key when present)")
    add("--known-hosts", type=Path, help="pinned known_hosts for the repository host (strict); default: "
                                         "accept-new into <state-dir>/known_hosts")
    add("--allowed-signers", type=Path, help="SSH allowed signers file: require commits signed by them")
    add("--openpgp-keys", type=Path, help="OpenPGP public keys file: require commits signed by them")
    add("--agent-input", help="flake input force-update refreshes (default nixfleet-agent)")
    add("--keep", type=int, default=results.KEEP, help="request directories kept")
    rebuild = parser.add_mutually_exclusive_group()
    rebuild.add_argument("--nixos-rebuild", default=None, help="nixos-rebuild executable (NixOS)")
    rebuild.add_argument("--darwin-rebuild", default=None, help="darwin-rebuild executable: this is a nix-darwin "
                                                                 "host (started by the root launchd daemon)")
    add("--systemctl", default="systemctl", help="systemctl executable (reboot on NixOS)")
    add("--shutdown", default="/sbin/shutdown", help="shutdown executable (reboot on nix-darwin)")
    add("--nix", default="nix", help="nix executable (force-update's lock refresh)")
    add("--health-interval", type=float, default=2.0, help=argparse.SUPPRESS)  # tests: seconds between rounds
    add("--gpg", default="gpg", help="gpg executable (OpenPGP signatures)")
    add("--ssh-keygen", default="ssh-keygen", help="ssh-keygen executable (SSH signatures)")
    add("--timeout", type=int, help="seconds one run may take before root ends it (default "
                                    f"{watch.DEFAULT_TIMEOUT}; privileged_timeout in --config)")
    add("--finalize", action="store_true", help="ExecStopPost=: write the result the main run left out, if any")
    add("--log-level", default="info", choices=sorted(log.LEVELS))
    rootside.add_arguments(parser)
    return parser


def bad(option: str, error: str) -> int:
    _log.error("bad-argument", option=option, error=error)
    return REJECTED_EXIT


# TOML key -> option, for --config; the module renders these from the same options the agent uses
_FROM_CONFIG = {"repo_url": "repo_url", "config_repo": "legacy_repo", "branch": "branch", "hostname": "flake_attr",
                "agent_input": "agent_input", "known_hosts_file": "known_hosts", "privileged_timeout": "timeout"}
_DEFAULTS = {"branch": "main", "flake_attr": "", "agent_input": DEFAULT_AGENT_INPUT}


def apply_config(args: argparse.Namespace) -> str | None:
    """Fill options not given from the agent's rendered TOML; an error text when it is unusable.

    The file must be root's and writable by nobody else: it decides what root fetches and builds,
    so it may come from the store or /etc, never from a place the agent can write."""
    if args.config is not None:
        def roots(info: os.stat_result) -> str | None:
            if info.st_uid != 0 and info.st_uid != os.geteuid() or info.st_mode & 0o022:
                return "must be owned by root and writable by nobody else"
            return None

        try:
            doc = tomllib.loads(localfile.read_text(str(args.config), CONFIG_FILE_MAX, check=roots))
        except localfile.LocalFileError as exc:
            return str(exc)
        except tomllib.TOMLDecodeError as exc:
            return f"cannot read {args.config}: {exc}"
        args.health = health_settings.parse(doc.get("health"))
        if args.health.problems:
            return "; ".join(args.health.problems)
        if args.repo_url is None and args.legacy_repo is None:
            if doc.get("repo_url"):
                args.repo_url = str(doc["repo_url"])
            elif doc.get("config_repo"):
                args.legacy_repo = Path(str(doc["config_repo"]))
        for key, name in _FROM_CONFIG.items():
            if key in ("repo_url", "config_repo") or getattr(args, name) is not None or not doc.get(key):
                continue
            setattr(args, name, Path(str(doc[key])) if name == "known_hosts" else
                    doc[key] if name == "timeout" else str(doc[key]))
    for name, value in _DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repo_url is None and args.legacy_repo is None:
        return "neither --repo-url nor --legacy-repo given (nor repo_url/config_repo in --config)"
    return None

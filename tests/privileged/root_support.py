"""A host for the root side's tests: the fleet's remote (a real git repository), the agent's state
dir with its own clone and the request path, root's output and state dirs, and shims for
nixos-rebuild, systemctl and nix that record how root called them.

The agent's clone is a real clone of the remote, so "a commit the agent authored" is exactly that:
a commit in the agent's clone that the remote never saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nixfleet_agent
from nixfleet_agent.root import main as root_main

SHIM = """#!/bin/sh
# records argv, cwd and the git config root passes, prints some output, exits $SHIM_EXIT
printf '%s\\n' "$*" >> "$SHIM_CALLS"
echo "building: $*"
i=0
while [ "$i" -lt "${GIT_CONFIG_COUNT:-0}" ]; do
  eval "echo \\"git config: \\$GIT_CONFIG_KEY_$i=\\$GIT_CONFIG_VALUE_$i\\""
  i=$((i + 1))
done
echo "cwd=$(pwd) count=$GIT_CONFIG_COUNT"
echo "to stderr" >&2
exit "${SHIM_EXIT:-0}"
"""

# `nix flake lock --update-input X ...`: sets input X's locked rev in ./flake.lock to $SHIM_LOCK_REV
NIX_SHIM = """#!/bin/sh
printf 'nix %s\\n' "$*" >> "$SHIM_CALLS"
echo "nix shim in $(pwd): $*"
input=""
prev=""
for arg in "$@"; do
  [ "$prev" = "--update-input" ] && input=$arg
  prev=$arg
done
[ -n "$input" ] && [ -n "$SHIM_LOCK_REV" ] || exit "${SHIM_NIX_EXIT:-0}"
python3 - "$input" "$SHIM_LOCK_REV" <<'EOF' || exit 1
import json, sys
lock = json.load(open("flake.lock"))
lock["nodes"][sys.argv[1]]["locked"]["rev"] = sys.argv[2]
open("flake.lock", "w").write(json.dumps(lock, indent=2) + "\\n")
EOF
exit "${SHIM_NIX_EXIT:-0}"
"""

ID = "20261121T235959Z-1a2b"
ATTR = "web1"
LOCK = {"nodes": {"nixfleet-agent": {"locked": {"rev": "0" * 40, "type": "github"}},
                  "root": {"inputs": {"nixfleet-agent": "nixfleet-agent"}}}, "root": "root", "version": 7}


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full = dict(os.environ, GIT_AUTHOR_NAME="Fleet Admin", GIT_AUTHOR_EMAIL="admin@example.test",
                GIT_COMMITTER_NAME="Fleet Admin", GIT_COMMITTER_EMAIL="admin@example.test", GIT_CONFIG_NOSYSTEM="1",
                GIT_CONFIG_GLOBAL="/dev/null", **(env or {}))
    for key in [k for k in full if k.startswith("GIT_CONFIG_") and k not in ("GIT_CONFIG_NOSYSTEM",
                                                                             "GIT_CONFIG_GLOBAL")]:
        del full[key]
    return subprocess.run(["git", "-C", str(repo), *args], env=full, check=True, capture_output=True,
                          text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str, *sign: str, when: int | None = None) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
        git(repo, "add", name)
    dates = {} if when is None else {"GIT_COMMITTER_DATE": f"@{when} +0000", "GIT_AUTHOR_DATE": f"@{when} +0000"}
    git(repo, *sign, "commit", "-q", "-m", message, env=dates)
    return git(repo, "rev-parse", "HEAD")


class Host:
    def __init__(self, tmp: Path) -> None:
        tmp = tmp.resolve()
        self.tmp = tmp
        self.origin = tmp / "origin"
        self.origin.mkdir()
        git(self.origin, "init", "-q", "-b", "main")
        git(self.origin, "config", "receive.denyCurrentBranch", "ignore")
        self.commit = commit(self.origin, {"flake.nix": "{ outputs = _: { }; }\n",
                                           "flake.lock": json.dumps(LOCK, indent=2) + "\n"}, "fleet")
        self.state = tmp / "state"
        self.request_dir = self.state / "privileged"
        self.request_dir.mkdir(parents=True, mode=0o700)
        self.request = self.request_dir / "request.json"
        self.agent_clone = self.state / "repo"
        subprocess.run(["git", "clone", "-q", str(self.origin), str(self.agent_clone)], check=True)
        self.root_dir = tmp / "root-state"
        self.out = tmp / "root-results"
        self.clone = self.root_dir / "repo"
        self.calls = tmp / "calls"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name, text in (("nixos-rebuild", SHIM), ("systemctl", SHIM), ("nix", NIX_SHIM)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.extra: list[str] = []

    def write(self, doc: object, owner: int | None = None) -> None:
        self.request.write_text(json.dumps(doc))
        if owner is not None:
            os.chown(self.request_dir, owner, owner)
            os.chown(self.request, owner, owner)

    def good(self, **overrides: object) -> dict[str, object]:
        return {"id": ID, "action": "switch", "commit": self.commit, "flake_attr": ATTR, **overrides}

    def argv(self) -> list[str]:
        return ["--request", str(self.request), "--repo-url", str(self.origin), "--branch", "main",
                "--out-dir", str(self.out), "--state-dir", str(self.root_dir), "--flake-attr", ATTR,
                "--nixos-rebuild", str(self.bin / "nixos-rebuild"), "--systemctl", str(self.bin / "systemctl"),
                "--nix", str(self.bin / "nix"), *self.extra]

    def run(self, exit_code: int = 0, lock_rev: str = "") -> int:
        os.environ["SHIM_CALLS"] = str(self.calls)
        os.environ["SHIM_EXIT"] = str(exit_code)
        os.environ["SHIM_LOCK_REV"] = lock_rev
        return root_main.main(self.argv())

    def flake(self, rev: str, ref: str = "main") -> str:
        return f"git+file://{self.clone}?ref={ref}&rev={rev}#{ATTR}"

    def shim_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def builds(self) -> list[str]:
        return [c for c in self.shim_calls() if not c.startswith("nix ")]

    def result(self, request_id: str = ID) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.out / request_id / "result.json").read_text())
        return doc

    def log(self, request_id: str = ID) -> str:
        return (self.out / request_id / "output.log").read_text()

    def rejected(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.out / "rejected.json").read_text())
        return doc


# where this test process imports the package from (the source tree, or the installed package in
# the nixpkgs check phase): the root program as a process must run the same code
AGENT = Path(nixfleet_agent.__file__).resolve().parents[1]


def pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(AGENT), os.environ.get("PYTHONPATH")]))


class RootRun:
    """One run of the root program as its own process, the way the unit starts it."""

    def __init__(self, host: Host, *extra: str, env: dict[str, str] | None = None) -> None:
        self.host = host
        full = dict(os.environ, PYTHONPATH=pythonpath(), **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "nixfleet_agent.root", *host.argv(), *extra],
                                     env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self, timeout: float = 60) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode()

    def kill(self) -> None:
        """Teardown: the root run and the build group it started (a killed root leaves it behind,
        as it would under systemd without the unit's control-group kill)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            os.killpg(int((self.host.tmp / "pids").read_text().split()[0]), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

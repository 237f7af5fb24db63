"""The fleet repository the agent clones: a bare repo on the host, served by `git daemon` in the
container.

Why a daemon and not `file://`: the agent's dynamic user does not own a repository created by
root, and git (2.39.4+) refuses to clone such a local repository ("dubious ownership"). A real
fleet remote is a server anyway; `git daemon` running as root inside the container (shared
network, loopback) serves the host-side bare repo through the exchange bind mount.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .container import Container
from .waiting import wait_for

FLAKE_NIX = """\
{
  description = "system tier fleet repo (the nixos-rebuild shim never evaluates it)";
  outputs = { self }: { };
}
"""

UNIT = """\
[Unit]
Description=git daemon serving the system tier's fleet repo

[Service]
ExecStart=/usr/bin/git daemon --reuseaddr --listen=127.0.0.1 --port={port} --base-path={base} --export-all {base}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _git(*args: str, cwd: Path | None = None) -> str:
    env = {"GIT_AUTHOR_NAME": "fleet", "GIT_AUTHOR_EMAIL": "fleet@test", "GIT_COMMITTER_NAME": "fleet",
           "GIT_COMMITTER_EMAIL": "fleet@test", "HOME": "/nonexistent", "PATH": "/usr/bin:/bin",
           "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


@dataclass
class FleetRepo:
    """Bare repo `<exchange>/git/fleet.git` plus a host work tree to make commits in."""

    exchange: Path
    inside_exchange: str
    branch: str = "main"

    @property
    def bare(self) -> Path:
        return self.exchange / "git" / "fleet.git"

    @property
    def work(self) -> Path:
        return self.exchange / "fleet-work"

    def create(self) -> str:
        """A fresh repository: several test modules share the session's exchange directory and each
        starts from its own history (a leftover one made `git remote add` fail)."""
        for old in (self.bare, self.work):
            shutil.rmtree(old, ignore_errors=True)
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", f"--initial-branch={self.branch}", str(self.bare))
        _git("init", "--quiet", f"--initial-branch={self.branch}", str(self.work))
        _git("remote", "add", "origin", str(self.bare), cwd=self.work)
        return self.commit({"flake.nix": FLAKE_NIX}, "initial fleet configuration")

    def commit(self, files: dict[str, str], message: str) -> str:
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            _git("add", name, cwd=self.work)
        _git("commit", "--quiet", "-m", message, cwd=self.work)
        _git("push", "--quiet", "origin", f"HEAD:{self.branch}", cwd=self.work)
        return _git("rev-parse", "HEAD", cwd=self.work)

    def head(self) -> str:
        return _git("rev-parse", "HEAD", cwd=self.work)

    def serve(self, box: Container) -> str:
        """Start the daemon unit inside the container; return the URL the agent clones from."""
        port = free_port()
        base = f"{self.inside_exchange}/git"
        box.write_file("/etc/systemd/system/fleet-git.service", UNIT.format(port=port, base=base))
        box.systemctl("daemon-reload")
        box.systemctl("restart", "fleet-git.service")

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, 15, f"git daemon on 127.0.0.1:{port}", detail=lambda: box.journal("fleet-git.service"))
        return f"git://127.0.0.1:{port}/fleet.git"

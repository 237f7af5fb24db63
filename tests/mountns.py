"""A private mount namespace with small tmpfs file systems in it, for the pre-flight tests.

A ``sleep`` started by ``unshare --mount --propagation private`` holds the namespace; mounts made
there with ``nsenter`` never reach the host, and vanish when the holder is killed, even if a test
dies halfway. The test process reaches the namespace's files through ``/proc/<pid>/root`` and runs
programs inside it with :meth:`MountNamespace.run` (``nsenter -t <pid> -m``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest


def require() -> None:
    """Skip unless this process can make mount namespaces (root, unshare and nsenter present)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs in a private mount namespace")
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


class MountNamespace:
    def __init__(self) -> None:
        require()
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "3600"],
                                       stdin=subprocess.DEVNULL)
        # the holder is in its namespace once its mount namespace differs from ours
        own = os.readlink("/proc/self/ns/mnt")
        for _ in range(2000):
            try:
                if os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != own and \
                        Path(f"/proc/{self.holder.pid}/cmdline").read_bytes().startswith(b"sleep"):
                    break
            except OSError:
                pass
            if self.holder.poll() is not None:
                raise RuntimeError(f"unshare exited with {self.holder.returncode}")
            os.sched_yield()
        else:
            raise RuntimeError("unshare never entered a new mount namespace")

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv], env=env,
                              capture_output=True, text=True, check=check, timeout=120)

    def tmpfs(self, where: Path, size: int) -> Path:
        """Mount a tmpfs of ``size`` bytes on ``where`` (created) inside the namespace."""
        self.run(["mkdir", "-p", str(where)])  # inside: below another tmpfs it exists only there
        self.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "nixfleet-test", str(where)])
        return where

    def outside(self, path: Path) -> Path:
        """The namespace's ``path`` as the test process reaches it."""
        return Path(f"/proc/{self.holder.pid}/root{path}")

    def fill(self, path: Path, size: int) -> None:
        """Occupy ``size`` bytes at ``path`` (a file on one of the tmpfs)."""
        with open(self.outside(path), "wb") as handle:
            handle.write(b"\0" * size)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def namespace() -> Iterator[MountNamespace]:
    """The body of the tests' ``ns`` fixture: one namespace per test, always torn down."""
    space = MountNamespace()
    try:
        yield space
    finally:
        space.close()

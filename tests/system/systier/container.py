"""A booted systemd-nspawn container over a throwaway overlay of the cached rootfs.

Lifetime rules that keep the host clean:
- the overlay is mounted inside a private mount namespace (`unshare --mount`) that only
  systemd-nspawn lives in, so when nspawn exits the mount is gone, whatever killed it;
- nspawn gets SIGTERM if the test process dies (`setpriv --pdeathsig`), which powers the
  container off;
- `stop()` powers off with a deadline and SIGKILLs after it, and is also registered with atexit.
The container shares the host network (no --private-network): the agent inside reaches the
reference dashboard on the host's loopback.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .waiting import WaitTimeout, wait_for

INNER_PATH = "/opt/nixfleet-agent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MACHINE_PREFIX = "nixfleet-sys"


class ContainerError(RuntimeError):
    pass


@dataclass
class Bind:
    host: Path
    inside: str
    read_only: bool = False

    def option(self) -> str:
        return f"--bind{'-ro' if self.read_only else ''}={self.host}:{self.inside}"


@dataclass
class Container:
    rootfs: Path
    binds: list[Bind] = field(default_factory=list)
    session_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    init_pid: int = 0

    @property
    def machine(self) -> str:
        """Unique per container: nspawn keeps per-machine state under /run/systemd/nspawn."""
        assert self.session_dir is not None
        suffix = self.session_dir.name.rsplit("-", 1)[-1].lower().replace("_", "x")
        return f"{MACHINE_PREFIX}-{suffix}"

    # ---------------------------------------------------------------- lifecycle
    def start(self, boot_timeout: float = 60) -> None:
        if self.session_dir is None:
            self.session_dir = Path(tempfile.mkdtemp(prefix="nixfleet-sys-"))
        for sub in ("upper", "work", "merged"):
            (self.session_dir / sub).mkdir()
        overlay = (
            f"lowerdir={self.rootfs},upperdir={self.session_dir / 'upper'},workdir={self.session_dir / 'work'}"
        )
        nspawn = [
            "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
            "--link-journal=no", "--console=pipe", f"--machine={self.machine}",
            f"--directory={self.session_dir / 'merged'}",
            *[bind.option() for bind in self.binds],
        ]
        script = (
            f"mount -t overlay overlay -o {shlex.quote(overlay)} {shlex.quote(str(self.session_dir / 'merged'))}"
            f" && exec {shlex.join(nspawn)}"
        )
        argv = ["setpriv", "--pdeathsig", "TERM", "unshare", "--mount", "--propagation", "private",
                "/bin/sh", "-c", script]
        with open(self.boot_log_path, "wb") as log:  # nspawn keeps its own copy of the descriptor
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        try:
            self.init_pid = wait_for(self._find_init, 20, "the container's systemd to start", detail=self.diagnostics)
            wait_for(self._booted, boot_timeout, "systemctl is-system-running to report running/degraded",
                     interval=0.5, detail=self.diagnostics)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30) -> None:
        """Power off (SIGTERM makes nspawn ask the container's systemd to), SIGKILL after `timeout`."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.init_pid = 0
        if self.session_dir is not None and self.session_dir.exists():
            leftover = self.leftover_mounts()
            if leftover:
                raise ContainerError("mounts left after the container stopped:\n" + "\n".join(leftover))
            keep = os.environ.get("NIXFLEET_TEST_KEEP_CONTAINER")
            if not keep:
                shutil.rmtree(self.session_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def boot_log_path(self) -> Path:
        assert self.session_dir is not None
        return self.session_dir / "boot.log"

    def leftover_mounts(self) -> list[str]:
        if self.session_dir is None:
            return []
        marker = str(self.session_dir)
        with open("/proc/self/mountinfo") as mounts:
            return [line.strip() for line in mounts if marker in line]

    def _find_init(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            raise ContainerError("systemd-nspawn exited early:\n" + self.boot_log_tail())
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == self.proc.pid and comm == "systemd":
                return int(entry)
        return None

    def _booted(self) -> bool:
        if not self.running:
            raise ContainerError("the container stopped while booting:\n" + self.boot_log_tail())
        state = self.run("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
        if state in ("running", "degraded"):
            return True
        if state == "maintenance":
            raise ContainerError("the container booted into maintenance mode:\n" + self.boot_log_tail())
        return False

    # ---------------------------------------------------------------- commands inside
    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside all of the container's namespaces with a clean environment."""
        if not self.init_pid:
            raise ContainerError("the container is not running")
        inner_env = {"PATH": INNER_PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
        inner_env.update(env or {})
        command = ["nsenter", "-t", str(self.init_pid), "-a", "--", "env", "-i",
                   *[f"{k}={v}" for k, v in inner_env.items()], *argv]
        try:
            done = subprocess.run(command, input=input, check=False, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(f"command inside the container took over {timeout:.0f}s: {shlex.join(argv)}") from None
        if check and done.returncode != 0:
            raise ContainerError(
                f"inside the container `{shlex.join(argv)}` exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-ec", script, **kwargs)  # type: ignore[arg-type]

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Write a file inside the container (the overlay is visible only in its mount namespace)."""
        text = content.decode() if isinstance(content, bytes) else content
        self.run("/bin/sh", "-ec", 'mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"',
                 "sh", path, format(mode, "o"), input=text)

    def read_file(self, path: str) -> str:
        return self.run("cat", path).stdout

    def systemctl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "--value", f"--property={prop}", unit).stdout.strip()

    def journal(self, unit: str | None = None, lines: int = 60) -> str:
        args = ["journalctl", "--no-pager", "-o", "short-precise", "-n", str(lines)]
        if unit:
            args += ["-u", unit]
        return self.run(*args, check=False, timeout=20).stdout

    def wait_unit_active(self, unit: str, timeout: float = 30) -> int:
        """Wait until `unit` is active with a main pid; return that pid."""

        def probe() -> int | None:
            state = self.show(unit, "ActiveState")
            if state == "failed":
                raise ContainerError(f"{unit} failed:\n{self.journal(unit)}")
            pid = int(self.show(unit, "MainPID") or 0)
            return pid if state == "active" and pid else None

        return wait_for(probe, timeout, f"{unit} to be active", detail=lambda: self.journal(unit))

    # ---------------------------------------------------------------- diagnostics
    def boot_log_tail(self, lines: int = 40) -> str:
        try:
            text = self.boot_log_path.read_text(errors="replace")
        except OSError:
            return "(no boot log)"
        return "boot log tail:\n" + "".join(text.splitlines(keepends=True)[-lines:])

    def diagnostics(self) -> str:
        parts = [self.boot_log_tail()]
        if self.running and self.init_pid:
            parts.append(self.run("systemctl", "--no-pager", "--failed", check=False, timeout=10).stdout)
        return "\n".join(parts)


def started(rootfs: Path, binds: list[Bind] | None = None, boot_timeout: float = 60) -> Container:
    began = time.monotonic()
    box = Container(rootfs=rootfs, binds=list(binds or []))
    box.start(boot_timeout)
    print(f"system tier: container booted in {time.monotonic() - began:.1f}s (pid {box.init_pid})")
    return box

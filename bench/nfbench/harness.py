"""The pieces every benchmark needs: the reference dashboard, a fleet repo, the agent as a process.

The agent is started the way a service manager starts it (its own process, production defaults:
5 s heartbeats, info logging) and its stderr is read line by line on a thread that stamps each line
with ``time.monotonic()``, the same clock the dashboard stamps received frames with, so "the agent
logged X" and "the dashboard received Y" can be compared directly.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = BENCH_DIR.parent
AGENT_SRC = REPO_ROOT / "agent"
TESTS_DIR = REPO_ROOT / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from dashboard import Dashboard, Record
from support import git, make_fleet_repo

TOKEN = "bench-token-4d1e"
HOST = "bench-host"
PTY_LAUNCHER = Path(__file__).resolve().parent / "pty_agent.py"
EMITTER = Path(__file__).resolve().parent / "emit_lines.py"

# hosts/<host>/tests/bench.sh: what the `test` command runs. One line at once by default (latency);
# with a number in $NIXFLEET_BENCH_CTL/lines it prints that many 80-character numbered lines. The one
# line says whether stdout is a terminal, so the bench can check the pty launcher took effect.
BENCH_SCRIPT = """#!/bin/sh
n=1
[ -r "$NIXFLEET_BENCH_CTL/lines" ] && read -r n < "$NIXFLEET_BENCH_CTL/lines"
if [ "$n" -le 1 ]; then
  if [ -t 1 ]; then echo "bench first line (tty)"; else echo "bench first line (pipe)"; fi
  exit 0
fi
exec "$NIXFLEET_BENCH_PYTHON" "$NIXFLEET_BENCH_EMIT" "$n"
"""


# How the agent's interpreter is started. "production" = ``python -S`` with the agent and its runtime
# dependencies on PYTHONPATH: no site-packages .pth hooks, which a Nix-built agent does not have
# either (this machine's site-packages runs an editable-install finder, setuptools' distutils hack
# and a certifi hook at every start: +5 MiB, +20 ms). "site" = the interpreter as installed here.
INTERPRETER = {"mode": "production"}
RUNTIME_DEPS = ("websocket", "pexpect", "ptyprocess")


def python_argv() -> list[str]:
    return [sys.executable, "-S"] if INTERPRETER["mode"] == "production" else [sys.executable]


def python_path() -> str:
    """PYTHONPATH for the agent: its sources, plus (production mode) where its dependencies live."""
    paths = [str(AGENT_SRC)]
    if INTERPRETER["mode"] == "production":
        import importlib.util

        for name in RUNTIME_DEPS:
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.origin:
                raise SystemExit(f"bench: runtime dependency {name!r} is not installed (pip install {name})")
            where = str(Path(spec.origin).resolve().parent.parent)
            if where not in paths:
                paths.append(where)
    return os.pathsep.join(paths)


def loadavg() -> float:
    """1-minute load average: other work on this machine skews every figure, so it is recorded."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "agent"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    version = (AGENT_SRC / "nixfleet_agent" / "VERSION").read_text().strip()
    if AGENT_SRC != REPO_ROOT / "agent":
        commit = f"agent sources from {AGENT_SRC} (not this checkout)"
        dirty = ""
    import websocket  # the version that decides the idle footprint

    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "kernel": platform.release(),
        "websocket_client": websocket.__version__,
        "agent_version": version,
        "agent_commit": commit + ("+dirty (uncommitted changes under agent/)" if dirty else ""),
        "clock_ticks_per_s": os.sysconf("SC_CLK_TCK"),
        "interpreter": " ".join(python_argv()) + f"  ({INTERPRETER['mode']})",
    }


class Workspace:
    """A temporary directory with a fleet repository whose host test script the benchmarks drive."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="nixfleet-bench-")
        self.root = Path(self._tmp.name)
        self.origin = make_fleet_repo(self.root / "origin", HOST)
        script = self.origin / "hosts" / HOST / "tests" / "bench.sh"
        script.write_text(BENCH_SCRIPT)
        script.chmod(0o755)
        git(self.origin, "add", "-A")
        git(self.origin, "commit", "-q", "-m", "bench script")
        self.ctl = self.root / "ctl"
        self.ctl.mkdir()
        self._n = 0

    def set_lines(self, n: int) -> None:
        (self.ctl / "lines").write_text(f"{n}\n")

    def new_state_dir(self) -> Path:
        self._n += 1
        return self.root / f"state-{self._n}"

    def close(self) -> None:
        self._tmp.cleanup()


def agent_env(url: str, state_dir: Path, ws: Workspace, **overrides: str) -> dict[str, str]:
    """Production settings (interval 5 s, ping 10 s, info logs) pointed at the loopback dashboard."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(state_dir.parent),
        "LANG": "C.UTF-8",
        "PYTHONPATH": python_path(),
        "NIXFLEET_URL": url,
        "NIXFLEET_TOKEN": TOKEN,
        "NIXFLEET_HOSTNAME": HOST,
        "NIXFLEET_STATE_DIR": str(state_dir),
        "NIXFLEET_REPO_URL": str(ws.origin),
        "NIXFLEET_INTERVAL": "5",
        "NIXFLEET_LOG_LEVEL": "info",
        "NIXFLEET_PLATFORM": "nixos",
        "NIXFLEET_BENCH_CTL": str(ws.ctl),
        "NIXFLEET_BENCH_PYTHON": sys.executable,
        "NIXFLEET_BENCH_EMIT": str(EMITTER),
    }
    env.update(overrides)
    return env


@dataclass
class LogLine:
    t: float
    text: str


@dataclass
class Agent:
    """A running agent; ``lines`` are its stderr log lines with arrival times."""

    proc: subprocess.Popen[bytes]
    t_spawn: float
    log_path: Path
    lines: list[LogLine] = field(default_factory=list)
    dash_mark: int = 0
    register: Record | None = None
    registered: LogLine | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with open(self.log_path, "wb") as out:
            for raw in self.proc.stderr:
                now = time.monotonic()
                out.write(raw)
                with self._cond:
                    self.lines.append(LogLine(now, raw.decode("utf-8", "replace").rstrip("\n")))
                    self._cond.notify_all()

    def wait_log(self, needle: str, timeout: float = 10.0, since: int = 0) -> LogLine:
        """First log line (from index ``since``) containing ``needle``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[since:]:
                    if needle in line.text:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(line.text for line in self.lines[-15:]) or "(none)"
                    code = self.proc.poll()
                    state = "still running" if code is None else f"exited with status {code}"
                    raise TimeoutError(f"agent ({state}) never logged {needle!r}; its last log lines:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader:
            self._reader.join(5)


def start_agent(env: Mapping[str, str], *, pty: bool = False) -> Agent:
    """Spawn the agent; ``pty=True`` runs it through a launcher that puts every child on a pty."""
    argv = python_argv() + ([str(PTY_LAUNCHER)] if pty else ["-m", "nixfleet_agent.cli"])
    state = Path(env["NIXFLEET_STATE_DIR"])
    state.parent.mkdir(parents=True, exist_ok=True)
    log_path = state.parent / f"{state.name}.log"
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    agent = Agent(proc, t0, log_path)
    agent._reader = threading.Thread(target=agent._read, name=f"agent-log-{proc.pid}", daemon=True)
    agent._reader.start()
    return agent


def wait_record(dash: Dashboard, kind: str, *, since: int = 0, timeout: float = 10.0,
                where: Callable[[Record], bool] | None = None) -> Record:
    return dash.wait_message(kind, HOST, since=since, where=where, timeout=timeout)


@contextmanager
def running_agent(dash: Dashboard, ws: Workspace, *, pty: bool = False, state_dir: Path | None = None,
                  env: Mapping[str, str] | None = None) -> Iterator[Agent]:
    """A registered agent (``agent.dash_mark`` = dashboard record index at its spawn), stopped afterwards."""
    mark = dash.mark()
    agent = start_agent(agent_env(dash.url, state_dir or ws.new_state_dir(), ws, **(env or {})), pty=pty)
    agent.dash_mark = mark
    try:
        agent.registered = agent.wait_log("event=registered", timeout=30)  # fails at once if it dies
        agent.register = wait_record(dash, "register", since=mark, timeout=5)
        yield agent
    finally:
        agent.stop()

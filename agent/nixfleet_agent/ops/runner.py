"""Run one child process and stream every line of its output; never lose a line, never hang.

Decisions (measured, see README "Commands"):

* **Pipes by default, pty on request.** Pipes keep stdout and stderr apart, which the dashboard
  needs (``is_error`` colours stderr red) and which a pty cannot do. The tools we run (git, nix,
  nixos-rebuild, home-manager) write their progress to stderr, which is unbuffered, so lines still
  arrive as produced. A pty also turns on nix's ANSI progress bar and git's ``\\r`` progress meters,
  which would be noise in the dashboard. ``mode="pty"`` exists for a program that only line-buffers
  on a terminal; it uses the stdlib ``pty`` pair rather than ``pexpect.spawn`` because pexpect makes
  the pty the child's *stdin* as well, and the brief requires stdin from ``/dev/null`` (a switch
  must never wait on a prompt). Throughput of both modes was measured and is in the README.
* **Own session.** Every child is started with ``start_new_session=True``: its process group is its
  own PID, so ``stop``/``kill`` signal exactly that group and never the agent (upstream bug 4.6).
* **Chunked reads, bounded lines.** Both streams are read in 64 KiB chunks through one ``select``
  loop, split on ``\\n``, one trailing ``\\r`` dropped, decoded as UTF-8 with replacement. A line
  longer than :data:`MAX_LINE` bytes is cut (marker included) and the rest of it is counted, not stored, so a 1 GiB
  line costs 16 KiB of memory (upstream hung at 64 KiB).
* **Drain before result.** A waiter thread notices the child's exit with ``waitid(WNOWAIT)``
  (kqueue ``NOTE_EXIT`` on macOS), so the PID stays valid for signalling until we reap it, and wakes the loop, which then reads until EOF
  on both pipes. If a grandchild keeps the pipes open after the child exited, reading stops after
  :data:`DRAIN_GRACE` seconds without data, with a note line, instead of hanging forever.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..redact import redact

SECRET_ENV = ("NIXFLEET_TOKEN",)  # never handed to a child (test scripts come from the fleet repo)
MAX_LINE = 16 * 1024  # bytes per output line, marker included
MARKER_ROOM = 64
CHUNK = 64 * 1024
DRAIN_GRACE = 5.0


class OutputSink(Protocol):
    def output(self, command: str, line: str, stream: str = "stdout") -> None: ...


class LogSink(Protocol):
    def write(self, line: str, stream: str = "stdout", *, flush: bool = True) -> None: ...

    def flush(self) -> None: ...


@dataclass
class Result:
    """How a child ended. ``exit_code`` is the shell convention (128+N for signal N)."""

    exit_code: int
    signal: int | None = None
    start_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.start_error is None

    def describe(self) -> str:
        if self.start_error:
            return self.start_error
        if self.signal is not None:
            return f"terminated by {signal_name(self.signal)}"
        return f"exit {self.exit_code}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class LineSplitter:
    """Bytes in, complete decoded lines out; memory bounded by :data:`MAX_LINE` per stream."""

    def __init__(self, emit: Callable[[str], None], max_line: int = MAX_LINE) -> None:
        self._emit = emit
        self._max = max_line
        self._buf = bytearray()
        self._dropped = 0  # bytes of the current line beyond max_line

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._append(data[start:])
                return
            self._append(data[start:nl])
            self._flush_line()
            start = nl + 1

    def pending(self) -> bool:
        """True while a partial line is buffered (no newline seen yet)."""
        return bool(self._buf or self._dropped)

    def pending_bytes(self) -> int:
        """Bytes of the partial line held back: a reader that resumes later starts that many bytes
        before its read offset, so the line is emitted whole, once."""
        return len(self._buf) + self._dropped

    def close(self) -> None:
        """Emit a final line that had no newline (EOF)."""
        if self._buf or self._dropped:
            self._flush_line()

    def _append(self, piece: bytes) -> None:
        room = self._max - len(self._buf)
        if len(piece) <= room:
            self._buf += piece
        else:
            self._buf += piece[: max(room, 0)]
            self._dropped += len(piece) - max(room, 0)

    def _flush_line(self) -> None:
        raw = bytes(self._buf)
        if not self._dropped and raw.endswith(b"\r"):
            raw = raw[:-1]
        if self._dropped:
            # Line plus marker stay within max_line bytes (the protocol layer enforces that too).
            total = len(raw) + self._dropped
            kept = raw[: self._max - MARKER_ROOM]
            # A cut may split a multi-byte character; drop the dangling replacement char.
            text = kept.decode("utf-8", errors="replace").rstrip("\ufffd")
            text += f" [... line truncated: {total - len(kept)} more bytes]"
        else:
            text = raw.decode("utf-8", errors="replace")
        self._buf.clear()
        self._dropped = 0
        self._emit(text)


def wait_exit_without_reaping(pid: int) -> bool:
    """Block until child ``pid`` has exited, leaving it unreaped (its PID stays reserved).

    Linux: ``waitid(WNOWAIT)``. macOS (CPython has no ``os.waitid`` there): a kqueue
    ``NOTE_EXIT`` watch. Returns False when neither exists; the caller then relies on EOF alone.
    """
    if hasattr(os, "waitid"):
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        return True
    if sys.platform == "darwin":
        kq = select.kqueue()
        try:
            event = select.kevent(pid, filter=select.KQ_FILTER_PROC, flags=select.KQ_EV_ADD | select.KQ_EV_ONESHOT,
                                  fflags=select.KQ_NOTE_EXIT)
            try:
                kq.control([event], 1, None)
            except ProcessLookupError:
                pass  # already exited
        finally:
            kq.close()
        return True
    return False


GROUP_GRACE = 1.0


def _live_members(pgid: int) -> bool | None:
    """Whether the group has a member that is not a zombie (Linux ``/proc``); None when unknown."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            return True
    return False


def end_group(leader: int) -> None:
    """A command ends with its whole process group (issue 13 item 5): a background grandchild
    (``daemon &`` in a test script, holding the pipe or not) is sent SIGTERM, then SIGKILL after
    :data:`GROUP_GRACE`. Called while the exited leader is still an unreaped zombie, so its PID,
    which is the group id, cannot have been reused by an unrelated group. Without ``/proc``
    (macOS) the SIGKILL follows at once."""
    if _live_members(leader) is False:
        return  # the common case: nothing left behind, no signal, no wait
    try:
        os.killpg(leader, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + GROUP_GRACE
    while time.monotonic() < deadline and _live_members(leader):
        time.sleep(0.02)
    if _live_members(leader) is not False:
        try:
            os.killpg(leader, signal.SIGKILL)
        except OSError:
            pass


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) without the agent's secrets."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in SECRET_ENV}


def _pty_pair() -> tuple[int, int]:
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n" translation
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    return master, slave


def _start_error(argv: Sequence[str], exc: OSError) -> tuple[str, int]:
    prog = argv[0] if argv else "(empty command)"
    if isinstance(exc, FileNotFoundError):
        return f"cannot start {prog}: not found (not on PATH or missing)", 127
    if isinstance(exc, PermissionError):
        return f"cannot start {prog}: not executable (permission denied)", 126
    return f"cannot start {prog}: {exc.strerror or exc}", 126


def run(
    argv: Sequence[str],
    *,
    command: str,
    reporter: OutputSink,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: LogSink | None = None,
    mode: Literal["pty", "pipes"] = "pipes",
    on_pid: Callable[[int | None], None] = lambda _pid: None,
) -> Result:
    """Run ``argv`` to completion, streaming each line to ``reporter`` and ``log``.

    ``on_pid(pid)`` is called once the child runs (its PID is also its process-group id) and
    ``on_pid(None)`` after output is drained but *before* the child is reaped, so a concurrent
    ``killpg`` on the announced PID can never hit a recycled PID.
    """

    def emit(stream: str) -> Callable[[str], None]:
        def _emit(line: str) -> None:
            line = redact(line)  # before the op log too: `nixfleet-agent status` shows it
            if log is not None:
                log.write(line, stream, flush=False)  # flushed once per chunk below
            reporter.output(command, line, stream)

        return _emit

    master = slave = -1
    try:
        if mode == "pty":
            master, slave = _pty_pair()
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                cwd=cwd, env=child_env(env), start_new_session=True,
            )
        else:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=child_env(env), start_new_session=True, bufsize=0,
            )
    except (OSError, ValueError) as exc:
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
        if isinstance(exc, OSError):
            message, code = _start_error(argv, exc)
        else:
            message, code = f"cannot start {argv[0] if argv else '(empty command)'}: {exc}", 126
        emit("stderr")(message)
        return Result(exit_code=code, start_error=message)

    streams: dict[int, tuple[str, LineSplitter]] = {}
    if mode == "pty":
        os.close(slave)
        streams[master] = ("stdout", LineSplitter(emit("stdout")))
    else:
        assert proc.stdout is not None and proc.stderr is not None
        streams[proc.stdout.fileno()] = ("stdout", LineSplitter(emit("stdout")))
        streams[proc.stderr.fileno()] = ("stderr", LineSplitter(emit("stderr")))

    on_pid(proc.pid)
    wake_r, wake_w = os.pipe()
    exited = threading.Event()

    def wait_exit() -> None:
        if wait_exit_without_reaping(proc.pid):
            exited.set()
            os.write(wake_w, b"x")

    waiter = threading.Thread(target=wait_exit, name=f"wait-{proc.pid}", daemon=True)
    waiter.start()

    sel = selectors.DefaultSelector()
    for fd in streams:
        sel.register(fd, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    open_fds = set(streams)
    try:
        while open_fds:
            events = sel.select(timeout=DRAIN_GRACE if exited.is_set() else None)
            if not events:  # exited, and nothing came for DRAIN_GRACE: a grandchild holds the pipe
                emit("stderr")(f"(output still open {DRAIN_GRACE:.0f}s after the command exited; stopped reading)")
                break
            for key, _ in events:
                fd = key.fd
                if fd == wake_r:
                    os.read(wake_r, 16)
                    continue
                try:
                    data = os.read(fd, CHUNK)
                except OSError as exc:
                    if exc.errno != errno.EIO:  # EIO = pty closed by the last writer (Linux)
                        raise
                    data = b""
                if data:
                    streams[fd][1].feed(data)
                    if log is not None:
                        log.flush()
                else:
                    streams[fd][1].close()
                    sel.unregister(fd)
                    open_fds.discard(fd)
        for fd in open_fds:
            streams[fd][1].close()
    except BaseException:
        # The sink failed (or we are interrupted): do not leave an orphan running unobserved.
        if not exited.is_set():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        raise
    finally:
        sel.close()
        if log is not None:
            log.flush()  # the last line (no newline at EOF) and any note after it
        if mode == "pty":
            os.close(master)
        else:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        waiter.join()
        os.close(wake_r)
        os.close(wake_w)
        if exited.is_set():
            end_group(proc.pid)
        on_pid(None)
        returncode = proc.wait()
    if returncode < 0:
        return Result(exit_code=128 - returncode, signal=-returncode)
    return Result(exit_code=returncode)

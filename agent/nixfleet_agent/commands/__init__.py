"""Fleet commands, one module per family; see docs/architecture.md.

:class:`Context` is what ``agent.Agent`` hands to the :class:`~nixfleet_agent.dispatcher.Dispatcher`.
:class:`Job` is what a command handler gets: one running command, with its name, its operation
log, and the only ways a handler talks to the outside (``say``/``run``/``status``/``progress``),
so every line it produces reaches both the dashboard and ``logs/<op-id>.log`` and every child it
starts is PID-tracked (``stop``/``kill`` can reach it, heartbeats show it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..ops import runner
from ..kinds import CommandStatus
from ..ops import attached, operations, oplog
from ..redact import redact
from ..ops.runner import Result

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..repo.clone import Repo
    from ..reporter import Reporter
    from ..host.status import StatusStore


@dataclass
class Context:
    cfg: Config
    reporter: Reporter
    status: StatusStore
    repo: Repo | None
    stop_event: threading.Event


class Tracker(Protocol):
    """The dispatcher's side of a job: PID tracking and stop requests (implemented there)."""

    def track(self, pid: int | None, detached: bool = False, root_op: str | None = None) -> None: ...
    def release(self) -> None: ...
    def cancelled(self) -> bool: ...
    def sent_signal(self) -> int | None: ...


def privileged_switch(cfg: Config) -> bool:
    """Privileged actions go through the root side: the NixOS module's root unit or the nix-darwin
    module's root launchd daemon (both set ``switch_launcher = "privileged"``). Home Manager has no
    root side, so there the setting falls back to detached/sudo."""
    return cfg.switch_launcher == "privileged" and cfg.platform in ("nixos", "darwin")


def sudo_n(argv: list[str]) -> list[str]:
    """Root's tools for a non-root agent: ``sudo -n`` fails at once instead of waiting for a password."""
    return argv if os.geteuid() == 0 else ["sudo", "-n", *argv]


def open_command_log(ctx: Context, name: str, op_id: str | None = None) -> oplog.OpLog:
    """A command's own log under ``logs/`` (a NullLog when the state dir is unwritable: the
    command still runs and streams). Reopening a detached switch's log adds no second header."""
    state_dir = Path(ctx.cfg.state_dir)
    reopened = op_id is not None and (oplog.logs_dir(state_dir) / f"{op_id}.log").exists()
    header = None if reopened else f"# {name} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    # a switch's log must survive rotation until its result has been reported
    keep = tuple(op.id for op in operations.unreported(state_dir, ctx.cfg.privileged_dir))
    try:
        return oplog.open_log(state_dir, op_id, header=header, protect=keep,
                              max_bytes=ctx.cfg.op_log_max_mb * 1024 * 1024)
    except OSError:
        return oplog.NullLog()


class Job:
    def __init__(self, ctx: Context, name: str, tracker: Tracker, op_id: str | None = None) -> None:
        self.ctx = ctx
        self.name = name
        self.tracker = tracker
        self.op_id = op_id or oplog.new_op_id()
        self.status_sent = False
        self._log: oplog.OpLog | None = None
        self._log_lock = threading.Lock()
        self._attached: attached.Record | None = None  # see ops/attached.py: set while a child may run

    @property
    def repo_path(self) -> Path:
        """The clone (isolated) or checkout (legacy) this command works in."""
        return self.ctx.repo.path if self.ctx.repo is not None else Path(self.ctx.cfg.repo_dir)

    # ----- output ---------------------------------------------------------------------------------

    @property
    def log(self) -> oplog.OpLog:
        """Opened on first use so commands that print nothing do not push switch logs out."""
        with self._log_lock:
            if self._log is None:
                self._log = open_command_log(self.ctx, self.name, self.op_id)
            return self._log

    def close_log(self) -> None:
        with self._log_lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def say(self, line: str, stream: str = "stdout") -> None:
        line = redact(line)
        self.log.write(line, stream)
        self.ctx.reporter.output(self.name, line, stream)

    def err(self, line: str) -> None:
        self.say(line, "stderr")

    # ----- children -------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        *,
        mode: Literal["pty", "pipes"] = "pipes",
        timeout: float | None = None,
        sink: Any = None,
    ) -> Result:
        """Run a child (streamed, logged, PID-tracked). A pending stop skips it: exit 130."""
        if self.tracker.cancelled():
            return Result(exit_code=130, signal=15)
        self.record_attached()
        timer: threading.Timer | None = None
        fired: list[bool] = []

        def on_pid(pid: int | None) -> None:
            nonlocal timer
            self.tracker.track(pid)
            if pid is not None and self._attached is not None:
                attached.child_started(Path(self.ctx.cfg.state_dir), self._attached, pid)
            if pid is not None and timeout:
                def expire() -> None:
                    fired.append(True)
                    operations.signal_group(pid, signal.SIGKILL)

                timer = threading.Timer(timeout, expire)
                timer.daemon = True
                timer.start()
            elif pid is None and timer is not None:
                timer.cancel()

        result = runner.run(argv, command=self.name, reporter=sink or self.ctx.reporter, cwd=cwd, env=env,
                            log=self.log, mode=mode, on_pid=on_pid)
        if fired:
            self.err(f"{argv[0]} timed out after {timeout:.0f}s and was killed")
            result.start_error = result.start_error or f"timed out after {timeout:.0f}s"
        return result

    def record_attached(self) -> None:
        """Before the command's first step (the dispatcher) and again before each child (a no-op once
        written): a record the next agent finds if this one dies uncleanly (ops/attached.py)."""
        if self._attached is None:
            try:
                self._attached = attached.begin(Path(self.ctx.cfg.state_dir), self.op_id, self.name)
            except (OSError, ValueError) as exc:  # the command still runs; only its recovery is lost
                self.err(f"warning: cannot record the running command for recovery: {exc}")

    def attached_done(self) -> None:
        """The final status is in the durable outbox (or the command ended): drop the record."""
        record, self._attached = self._attached, None
        if record is not None:
            attached.finish(Path(self.ctx.cfg.state_dir), record)

    def repo_env(self) -> Mapping[str, str] | None:
        """The repository's child environment; None (inherit) if the SSH setup is unusable."""
        repo = self.ctx.repo
        if repo is None:
            return None
        try:
            return repo.git_env()
        except Exception as exc:  # noqa: BLE001 - RepoError: say it, carry on without SSH settings
            self.err(f"warning: {exc}")
            return None

    def run_fn(self) -> Callable[[Sequence[str], Mapping[str, str] | None, Path | None], int]:
        """The ``RunFn`` that repo.clone / repo.lockupdate expect."""

        def _run(argv: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None) -> int:
            return self.run(argv, env, cwd).exit_code

        return _run

    # ----- reporting ------------------------------------------------------------------------------

    def status(self, status: CommandStatus, exit_code: int, message: str = "", command: str | None = None) -> None:
        """Send a ``status``. The job's own final status frees the busy flag *first*: a dashboard
        sends its next command as soon as it sees the status and must not be rejected."""
        self.log.write(f"# status={status} exit_code={exit_code} message={message}")
        if command is None or command == self.name:
            self.status_sent = True
            self.tracker.release()
            if self._attached is not None:
                attached.finalize(Path(self.ctx.cfg.state_dir), self._attached, status, exit_code, message)
        self.ctx.reporter.status(command or self.name, status, exit_code, message)
        if command is None or command == self.name:
            self.attached_done()  # after the hand-over: from here the link journal owns the result

    def progress(self, phase: str, current: int, total: int, status: str) -> None:
        self.ctx.reporter.progress(phase, current, total, status)

    def stopped_status(self, result: Result, extra: str = "") -> bool:
        """If the user (or the agent's own shutdown) stopped this job, send the ``stopped`` status
        naming the signal; True if so."""
        if self.tracker.sent_signal() is None:
            return False
        how = (f"terminated by {runner.signal_name(result.signal)}" if result.signal is not None
               else f"ended with exit {result.exit_code}")
        who = self.stopped_by()
        self.err(f"⏹  {self.name} stopped by {who} ({how}){extra}")
        self.status("stopped", result.exit_code or 130, f"stopped by {who}: {how}{extra}")
        return True

    def stopped_by(self) -> str:
        """Who ended the job: the dashboard's ``stop``/``kill``, or the agent shutting down (which
        ends attached children and reports them before it exits)."""
        return "agent shutdown" if self.ctx.stop_event.is_set() else "user"

"""Busy flag, command routing, stop/kill, and resuming switches that outlived the previous agent.

Why it looks like this:

* The busy flag is taken under a lock *on the connection thread*, before the worker exists, so two
  commands arriving in the same millisecond cannot both start (upstream set it inside the worker).
* ``stop``, ``kill``, ``restart`` and ``reboot`` bypass the busy check and never block the message
  loop: signalling is immediate, the SIGKILL escalation is a timer, restart/reboot have a lane
  (thread) of their own so their waits never delay a stop.
* Signals go to the child's own process group only (the runner starts each child in a new
  session). The agent's own group is never signalled (upstream's stop killed the agent).
* A command handler that raises still ends with a ``status`` error; nothing is left pending.
* The tracked PID is cleared by the runner *before* it reaps the child, under the same lock stop
  uses, so ``stop`` can never signal a recycled PID.
"""

from __future__ import annotations

import signal
import threading
import traceback
from collections.abc import Callable
from types import ModuleType

from . import log as logmod
from .ops import operations, rootwatch
from .commands import Context, Job
from .controlqueue import ControlQueue

_log = logmod.get("dispatcher")

KILL_GRACE = 5.0  # kill_command's SIGTERM -> SIGKILL escalation (upstream 5 s; stop uses cfg.stop_grace)
SHUTDOWN_KILL_AFTER = 3.0  # agent shutdown: SIGTERM -> SIGKILL of an attached command group


def _registry() -> ModuleType:
    """The command handlers (every module under ``commands/``), imported by the first command's own
    thread rather than at start: most of an agent's life is idle, and their code is ~0.4 MiB of RSS."""
    from .commands import registry

    return registry


def _run_command(job: Job) -> None:
    job.record_attached()  # first, on the worker: the next agent reports it if this one dies (ops/attached)
    _registry().run(job)


class Dispatcher:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.RLock()  # re-entrant: kill_now runs in a signal handler on the main thread, which may hold it in join()
        self._current: str | None = None
        self._pid: int | None = None
        self._detached = False  # the tracked PID is a detached operation (survives agent shutdown)
        self._root_op: str | None = None  # the id of the privileged operation root runs for the job
        self._cancel = False
        self._signal: int | None = None  # the last signal *we* sent to the current job
        self._job: Job | None = None
        self._worker: threading.Thread | None = None
        self._control = ControlQueue()  # stop/kill and SIGKILL escalations: one thread, coalesced
        # restart/reboot wait (the 3 s announcement, a root result, draining the outbox): a lane of
        # their own, so a stop or a SIGKILL countdown is never queued behind them
        self._slow = ControlQueue()
        watcher = threading.Thread(target=self._on_shutdown, name="dispatcher-shutdown", daemon=True)
        watcher.start()

    # ----- called on the connection thread (never block) -----------------------------------------

    def on_command(self, name: str) -> None:
        name = (name or "").strip()
        if name in ("stop", "kill", "restart", "reboot"):
            # On the control thread: their reporting may wait on a full Outbox (restart drains
            # it), and the connection thread must keep reading meanwhile. A repeat of a request
            # still pending is coalesced into it.
            _log.info("command_received", command=name, busy=self._current or "")
            handler: Callable[[Context], None] = {
                "stop": lambda _ctx: self.stop(),
                "kill": lambda _ctx: self._kill("SIGTERM", 0),
                "restart": lambda ctx: _registry().restart(ctx),
                "reboot": lambda ctx: _registry().reboot(ctx),
            }[name]
            lane = self._slow if name in ("restart", "reboot") else self._control
            lane.submit(name, lambda: self._guard(name, handler))
            return
        with self._lock:
            if self._current is not None:
                current, pid = self._current, self._pid
                rejected = True
            else:
                self._begin_locked(name)
                rejected = False
        if rejected:
            _log.info("command_rejected", command=name, current=current, pid=pid)
            self.ctx.reporter.rejected(current or "", pid)
            return
        _log.info("command_started", command=name)
        self._start_worker(name, _run_command)

    def run_exclusive(self, name: str, body: Callable[[Job], None]) -> bool:
        """Run ``body`` in the one-command slot if it is free (the automatic reboot: no command
        may start while it goes on); False when a command holds the slot."""
        with self._lock:
            if self._current is not None:
                return False
            self._begin_locked(name)
        self._start_worker(name, body)
        return True

    def on_kill(self, signal_name: str, pid: int) -> None:
        """``kill_command`` (and the ``kill`` command): SIGTERM then SIGKILL, or SIGKILL at once."""
        self._control.submit(("kill", signal_name, pid),
                             lambda: self._guard("kill", lambda _ctx: self._kill(signal_name, pid)))

    def _kill(self, signal_name: str, pid: int) -> None:
        """``kill``/``kill_command``: the one cancel path, reported as output lines (upstream)."""
        with self._lock:
            current, tracked = self._current, self._pid
        say = self._say_for(current or "kill")
        signum = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}.get(signal_name)
        if signum is None:
            say(f"❌ Unknown signal: {signal_name}")
            return
        ok, message = self.cancel(signum, KILL_GRACE, pid, lambda: say("⚠️ Process didn't terminate, sending SIGKILL..."))
        if current is None:
            say("⚠️ No command running to kill")
        elif not ok:
            say(f"❌ {message}")
        else:
            say(f"⚠️ Received kill command: {signal_name}" + (f" (PID {tracked})" if tracked else ""))
            say(f"✓ {message}")

    def stop(self) -> None:
        grace = float(getattr(self.ctx.cfg, "stop_grace", 3))
        ok, message = self.cancel(signal.SIGTERM, grace)
        self.ctx.reporter.status("stop", "ok" if ok else "error", 0 if ok else 1, message)

    def cancel(self, signum: int, grace: float, pid: int = 0,
               announce: Callable[[], None] = lambda: None) -> tuple[bool, str]:
        """The one cancel path of ``stop`` and ``kill``: (done, what was done or why not).

        It knows the three things a command can be doing: running an attached child or a detached
        switch (a PID: its process group gets ``signum``, SIGTERM escalating to SIGKILL after
        ``grace``), being between two steps (the next one is not started), or following a
        privileged operation root runs (root is asked through ``cancel.json`` to end it)."""
        with self._lock:
            current, tracked, root_op = self._current, self._pid, self._root_op
            if current is None:
                return False, "no command running"
            if pid and pid != tracked:
                return False, f"Refusing to kill PID {pid}: it is not the running command (PID {tracked or 'none'})"
            if tracked is None and root_op is None:
                self._cancel = True  # between steps: the job's next child is not started
                self._signal = signum
                return True, f"stop requested: {current} stops before its next step"
        if tracked is None and root_op is not None:
            error = rootwatch.request_cancel(self.ctx.cfg.state_dir, root_op)
            if error:
                return False, f"cannot ask the privileged unit to cancel {current}: {error}"
            with self._lock:
                if self._root_op == root_op:
                    self._signal = signum
            _log.info("privileged_cancel_requested", id=root_op, command=current)
            return True, (f"asked the privileged unit to cancel {current} ({root_op}); root ends nixos-rebuild "
                          "(SIGTERM, then SIGKILL)")
        assert tracked is not None
        error = self._send(tracked, signum)
        if error:
            return False, f"failed to terminate: {error}"
        if signum == signal.SIGKILL:
            return True, f"sent SIGKILL to {current} (PID {tracked})"
        self._escalate(tracked, grace, announce)
        return True, f"sent SIGTERM to {current} (PID {tracked}); SIGKILL after {grace:g}s"

    def pending(self) -> tuple[str | None, int | None]:
        with self._lock:
            return self._current, self._pid

    def emit(self, line: str, stream: str = "stdout") -> None:
        """Route a note (e.g. from repo.clone) to the running command's output, else to the log."""
        job = self._job
        if job is not None:
            job.say(line, stream)
        else:
            _log.info("note", line=line, stream=stream)

    def resume(self) -> None:
        """Report switches/rollbacks a previous agent process started but did not report."""
        ops = operations.unreported(self.ctx.cfg.state_dir, self.ctx.cfg.privileged_dir)
        if not ops:
            return
        with self._lock:
            if self._current is not None:
                return
            self._begin_locked(ops[0].command)
        _log.info("resuming_operations", count=len(ops), ids=",".join(op.id for op in ops))

        def work(job: Job) -> None:
            registry = _registry()
            for i, op in enumerate(ops):
                if i:
                    job.close_log()
                    self._release(job)
                    next_job = self._new_job(op.command, op.id)
                    if next_job is None:
                        return  # busy with a new command: the next agent start reports the rest
                    job = next_job
                registry.resume_operation(job, op)

        self._start_worker(ops[0].command, work, op_id=ops[0].id)

    # ----- worker ------------------------------------------------------------------------------

    def _begin_locked(self, name: str) -> None:
        self._current, self._pid, self._detached, self._root_op = name, None, False, None
        self._cancel, self._signal = False, None

    def _new_job(self, name: str, op_id: str | None = None) -> Job | None:
        """The next job of a resume batch, or None when another command took the slot meanwhile."""
        with self._lock:
            if self._current is not None:
                return None
            self._begin_locked(name)
            job = Job(self.ctx, name, _Tracker(self), op_id)
            job.tracker = _Tracker(self, job)
            self._job = job
        return job

    def _start_worker(self, name: str, body: Callable[[Job], None], op_id: str | None = None) -> None:
        job = Job(self.ctx, name, _Tracker(self), op_id)
        job.tracker = _Tracker(self, job)
        worker = threading.Thread(target=self._work, args=(job, body), name=f"command-{name}"[:40], daemon=True)
        with self._lock:
            self._job, self._worker = job, worker
        try:
            worker.start()
        except RuntimeError as exc:  # e.g. a task limit: the busy flag must not stay set for ever
            _log.error("command_thread_start_failed", command=name, error=str(exc))
            self._release(job)
            self.ctx.reporter.status(name, "error", 1, f"cannot start the command: {exc}")

    def join(self, timeout: float) -> bool:
        """Agent shutdown: give the running command time to wind down before the process exits.
        A followed switch saves its log offset and an attached command reports how it ended; a
        daemon thread cut off mid-way would make the next agent repeat or miss output. True while
        the command still runs."""
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return worker.is_alive()
        return False

    def _work(self, job: Job, body: Callable[[Job], None]) -> None:
        try:
            body(job)
        except Exception as exc:  # noqa: BLE001 - a bug must still end the command visibly
            _log.error("command_crashed", command=job.name, error=repr(exc))
            _log.debug("command_traceback", trace=traceback.format_exc())
            try:
                job.err(f"internal error in {job.name}: {exc!r}")
                if not job.status_sent:
                    job.status("error", 1, f"internal error: {exc}")
            except Exception as again:  # noqa: BLE001 - reporting itself failed; the log has it
                _log.error("command_crash_report_failed", command=job.name, error=repr(again))
        finally:
            job.close_log()
            job.attached_done()  # ended without its own status: nothing is left to recover
            self._release(job)
            _log.info("command_finished", command=job.name)

    def _release(self, job: Job) -> None:
        """Free the busy flag if ``job`` still holds it (its final status may have freed it already)."""
        with self._lock:
            if self._job is job:
                self._current, self._pid, self._detached, self._job = None, None, False, None
                self._root_op = None
                self._cancel, self._signal = False, None

    def _guard(self, name: str, fn: Callable[[Context], None]) -> None:
        try:
            fn(self.ctx)
        except Exception as exc:  # noqa: BLE001 - same rule as _work
            _log.error("command_crashed", command=name, error=repr(exc))
            self.ctx.reporter.status(name, "error", 1, f"internal error: {exc}")

    # ----- signals -----------------------------------------------------------------------------

    def _send(self, pid: int, signum: int) -> str | None:
        with self._lock:
            if pid != self._pid:
                return None  # already gone (cleared before reaping): nothing to signal
            self._signal = signum
            return operations.signal_group(pid, signum)

    def _escalate(self, pid: int, grace: float, announce: Callable[[], None]) -> None:
        def fire() -> None:
            with self._lock:
                alive = pid == self._pid
            if alive:
                announce()
                self._send(pid, signal.SIGKILL)

        self._control.after(grace, ("escalate", pid), fire)  # one countdown per PID, no thread of its own

    def _say_for(self, command: str) -> Callable[[str], None]:
        def say(line: str) -> None:
            job = self._job
            if job is not None:
                job.err(line)
            else:
                self.ctx.reporter.output(command, line, "stderr")

        return say

    def _on_shutdown(self) -> None:
        """Agent shutdown: end attached children (a detached switch keeps running on its own)."""
        self.ctx.stop_event.wait()
        with self._lock:
            pid, detached = self._pid, self._detached
        if pid is not None and not detached:
            _log.info("terminating_child_on_shutdown", pid=pid)
            self._send(pid, signal.SIGTERM)
            # a group that ignores SIGTERM must not outlive the agent: SIGKILL while there is still
            # time (SHUTDOWN_KILL_AFTER < the agent's 5 s wait) to report how the command ended
            self._escalate(pid, SHUTDOWN_KILL_AFTER,
                           lambda: _log.warn("killing_child_on_shutdown", pid=pid, after_s=SHUTDOWN_KILL_AFTER))

    def kill_now(self) -> None:
        """A second Ctrl-C: SIGKILL the attached command's group at once (a detached switch is left alone)."""
        with self._lock:
            pid, detached = self._pid, self._detached
        if pid is not None and not detached:
            _log.warn("killing_child_on_shutdown", pid=pid, after_s=0)
            self._send(pid, signal.SIGKILL)


class _Tracker:
    """A job's handle on the dispatcher state; a no-op once the job has released the slot."""

    def __init__(self, dispatcher: Dispatcher, job: Job | None = None) -> None:
        self._d = dispatcher
        self._job = job

    def _mine(self) -> bool:
        return self._job is None or self._d._job is self._job

    def track(self, pid: int | None, detached: bool = False, root_op: str | None = None) -> None:
        with self._d._lock:
            if self._mine():
                self._d._pid, self._d._detached, self._d._root_op = pid, detached, root_op

    def release(self) -> None:
        if self._job is None:
            return
        with self._d._lock:
            if self._d._job is self._job:
                self._job_signal = self._d._signal  # still answerable after the slot is freed
        self._d._release(self._job)

    def cancelled(self) -> bool:
        with self._d._lock:
            return self._mine() and self._d._cancel

    def sent_signal(self) -> int | None:
        with self._d._lock:
            return self._d._signal if self._mine() else self._job_signal

    _job_signal: int | None = None

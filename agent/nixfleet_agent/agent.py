"""Wires config, repository, dashboard connection, heartbeats and command dispatch together.

The agent owns the long-lived threads (see docs/architecture.md): the connection loop and its writer,
the heartbeat ticker and, when the first repository preparation fails, a clone-retry thread. A broken
repository or an unreachable git remote never keeps a host off the dashboard: the agent connects anyway
and reports the problem in its status compartments while it retries.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import Any

from . import buildinfo, log
from .link import protocol
from .link.backoff import Backoff
from .config import Config
from .link.session import Connection
from .host.heartbeat import Heartbeat, LocalRepoFacts, RepoFacts
from .link.journal import Journal
from .link.outbox import Message, Outbox
from .privatefs import ensure_private_dir
from .reporter import Reporter
from .host.status import StatusStore, now_rfc3339
from .health import confirm as health_confirm
from .visibility.service import Visibility

_log = log.get("agent")
REPO_PREPARE_WAIT = 20.0  # seconds the first clone may delay the first connection
JOIN_SLICE = 0.1  # seconds: how late a signal's handler may run while the agent waits for its command
SHUTDOWN_COMMAND_WAIT = 5.0  # seconds a running command gets to record where it got to on shutdown
EXIT_SIGINT = 130  # Ctrl-C in a terminal: 128 + SIGINT, as a shell reports an interrupted program


def _optional_module(name: str) -> Any | None:
    """Import a sibling module that another part of the project provides, if present."""
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith(name):
            return None
        raise


class Agent:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.exit_code = 0
        self._hb_wake = threading.Event()
        os.umask(0o077)
        ensure_private_dir(cfg.state_dir)
        self.status = StatusStore(cfg.state_dir, cfg.git_timeout)
        self.outbox = Outbox(cfg.outbox_max, journal=Journal(cfg.state_dir))
        self.repo = self._make_repo()
        self.facts: RepoFacts = self.repo if self.repo is not None else LocalRepoFacts(cfg.repo_dir)
        self.reporter = Reporter(self.outbox, self.status, generation=self.facts.generation, stop=self.stop_event)
        self.dispatcher = self._make_dispatcher()
        self.visibility = Visibility(cfg, self.status, getattr(self.repo, "path", cfg.repo_dir))
        self.heartbeat = Heartbeat(cfg, self.facts, self.status, self._pending, self.visibility.heartbeat_fields)
        self.connection = Connection(
            cfg,
            self.outbox,
            build_register=lambda: protocol.encode("register", self.heartbeat.register_payload()),
            on_message=self._on_message,
            on_registered=self._registered,
            stop=self.stop_event,
        )
        self.reporter.bind(heartbeat_now=self._hb_wake.set, reconnect=self.connection.reconnect, exit=self._exit,
                           heartbeat_sync=self._send_heartbeat)
        self._threads: list[threading.Thread] = []
        self._wake_r = self._wake_w = -1

    # -- construction of the optional parts ------------------------------------------------------
    def _make_repo(self) -> Any | None:
        try:
            module = _optional_module("repo.clone")
        except Exception as exc:  # noqa: BLE001
            _log.error("repo_module_broken", error=f"{type(exc).__name__}: {exc}"[:300])
            module = None
        if module is None:
            _log.warn("repo_module_missing", hint="repository management not available in this build")
            return None
        return module.Repo(self.cfg, emit=self._repo_emit)

    def _repo_emit(self, line: str, stream: str = "stdout") -> None:
        """Repository notes (moving a broken clone aside, fetch errors) reach the running command."""
        dispatcher = getattr(self, "dispatcher", None)
        if dispatcher is not None:
            dispatcher.emit(line, stream)

    def _make_dispatcher(self) -> Any | None:
        try:
            dispatcher = _optional_module("dispatcher")
            commands = _optional_module("commands")
        except Exception as exc:  # noqa: BLE001 - a broken command layer must not keep the host offline
            _log.error("commands_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
            return None
        context_cls = getattr(commands, "Context", None) if commands else None
        if dispatcher is None or context_cls is None:
            _log.warn("commands_unavailable", hint="dispatcher not present; commands will be answered with an error")
            return None
        ctx = context_cls(cfg=self.cfg, reporter=self.reporter, status=self.status, repo=self.repo,
                          stop_event=self.stop_event)
        return dispatcher.Dispatcher(ctx)

    # -- callbacks ---------------------------------------------------------------------------------
    def _pending(self) -> tuple[str | None, int | None]:
        if self.dispatcher is None:
            return None, None
        return self.dispatcher.pending()

    def _on_message(self, message: protocol.Inbound) -> None:
        if isinstance(message, protocol.Command):
            _log.info("command_received", command=message.name)
            if self.dispatcher is None:
                self.reporter.status(message.name, "error", 1, "commands not available")
            else:
                self.dispatcher.on_command(message.name)
        elif isinstance(message, protocol.KillCommand):
            _log.info("kill_received", signal=message.signal, pid=message.pid)
            if self.dispatcher is None:
                self.reporter.output("kill", "⚠️ No command running to kill", "stderr")
            else:
                self.dispatcher.on_kill(message.signal, message.pid)

    def _registered(self) -> None:
        self._hb_wake.set()  # first heartbeat right away, not one interval later
        health_confirm.note_registered()  # require_reconnect: a switch waits for this
        self.status.note("last_registration", now_rfc3339())
        notice = self.repo.deprecation_notice() if self.repo is not None else None
        if notice:  # legacy configRepo: the dashboard's operator must see it, not only the journal
            self.reporter.output("agent", f"⚠️  {notice}", "stderr")

    def _exit(self, code: int) -> None:
        _log.info("exit_requested", code=code)
        self.exit_code = code
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self._hb_wake.set()
        self.visibility.stop()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    # -- threads -----------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        interval = float(self.cfg.interval)
        next_due = time.monotonic() + interval
        alive = self.cfg.state_dir / "alive"
        while not self.stop_event.is_set():
            woke = self._hb_wake.wait(max(0.0, next_due - time.monotonic()))
            if self.stop_event.is_set():
                break
            if woke:
                self._hb_wake.clear()
            else:
                next_due += interval
                if next_due < time.monotonic():
                    next_due = time.monotonic() + interval
            _touch(alive)
            self.visibility.tick(self.connection.registered)
            self._send_heartbeat()

    def _send_heartbeat(self) -> None:
        """Queue one heartbeat if registered (the ticker, and the post-switch flush in its caller)."""
        if not self.connection.registered:
            return
        try:
            payload = self.heartbeat.heartbeat_payload()
        except Exception as exc:  # noqa: BLE001 - never let one bad sample stop heartbeats
            _log.error("heartbeat_failed", error=str(exc)[:200])
            return
        self.outbox.put(Message("heartbeat", protocol.encode("heartbeat", payload), durable=False), self.stop_event)

    def _prepare_repo(self) -> None:
        """Validate or clone before connecting, so the first commands find the clone in place, but
        only for a bounded time: a slow first clone goes on in the background while the host is
        already on the dashboard."""
        if self.repo is None:
            return
        first_attempt = threading.Event()
        thread = threading.Thread(target=self._repo_prepare_loop, args=(first_attempt,), name="repo-prepare",
                                  daemon=True)
        thread.start()
        self._threads.append(thread)
        if not first_attempt.wait(REPO_PREPARE_WAIT):
            _log.warn("repo_prepare_slow", waited_s=REPO_PREPARE_WAIT, hint="connecting while the clone goes on")

    def _repo_prepare_loop(self, first_attempt: threading.Event) -> None:
        if self.repo is None:  # no repository configured: nothing to prepare
            first_attempt.set()
            return
        try:
            self.repo.ensure()
        except Exception as exc:  # noqa: BLE001 - RepoError or worse: report and retry, never fatal
            self._repo_failed(exc)
            first_attempt.set()
            self._repo_retry_loop()
            return
        self._repo_ok()
        first_attempt.set()
        self._hb_wake.set()

    def _repo_failed(self, exc: BaseException) -> None:
        message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        self.status.set("git", "error", f"Repository unavailable: {message}")
        self.status.note("repo_error", message)

    def _repo_ok(self) -> None:
        if self.status.get("git")["message"].startswith("Repository unavailable"):
            self.status.set("git", "", "")
        self.status.note("repo_error", "")
        try:
            self.status.refresh_lock(self.cfg.repo_dir, force=True)
        except OSError:
            pass

    def _repo_retry_loop(self) -> None:
        assert self.repo is not None
        backoff = Backoff(2.0, 300.0)
        while not self.stop_event.wait(max(1.0, backoff.next())):
            if self.repo.ready():
                self._repo_ok()  # a command (pull) fixed it meanwhile
                return
            try:
                self.repo.ensure()
            except Exception as exc:  # noqa: BLE001
                self._repo_failed(exc)
                _log.warn("repo_retry_failed", retry_ceiling=backoff.ceiling())
                continue
            _log.info("repo_ready", path=str(self.cfg.repo_dir))
            self._repo_ok()
            self._hb_wake.set()
            return

    # -- main ---------------------------------------------------------------------------------------
    def run(self) -> int:
        _log.info(
            "starting",
            version=buildinfo.version(),
            source_commit=buildinfo.source_commit(),
            wire_agent_version=protocol.UPSTREAM_PROTOCOL_VERSION,
            host=self.cfg.hostname,
            url=self.cfg.url,
            repo_dir=str(self.cfg.repo_dir),
            isolated_mode=self.cfg.isolated,
            platform=self.cfg.platform,
            state_dir=str(self.cfg.state_dir),
            pid=os.getpid(),
        )
        self._install_signals()
        from .commands import agentpkg  # issue 13 hook: what this process runs, for the restart rule

        agentpkg.remember_started(self.cfg.platform)
        self._prepare_repo()
        self._recover_attached()
        if self.dispatcher is not None:
            try:
                self.dispatcher.resume()
            except Exception as exc:  # noqa: BLE001 - a bad record must not stop the agent
                _log.error("resume_failed", error=str(exc)[:300])
        self.connection.start()
        self.visibility.start(lambda: self._pending()[0] is not None,
                              getattr(self.dispatcher, "run_exclusive", None), self.stop_event)
        ticker = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        ticker.start()
        self._threads.append(ticker)
        self._wait_for_stop()
        _log.info("stopping", exit_code=self.exit_code)
        if self.dispatcher is not None:
            deadline = time.monotonic() + SHUTDOWN_COMMAND_WAIT
            # in slices: a second Ctrl-C the kernel delivers to another thread runs its handler only
            # when the main thread runs Python again, and a thread join is not woken by it (seen:
            # the handler ran 3 s late, after the grace's own SIGKILL)
            while self.dispatcher.join(min(JOIN_SLICE, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    break
        if self.connection.registered:
            self.outbox.drain(2.0)  # last output lines; request_exit has already flushed its own
        self.connection.shutdown("shutdown", timeout=2.0)
        self.outbox.close()
        for thread in self._threads:
            thread.join(1.0)  # daemon threads; the process exits right after this either way
        _log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

    def _recover_attached(self) -> None:
        """An attached command the previous process did not finish (it was SIGKILLed, crashed, or the
        host rebooted): end its group if it still runs and report it (ops/attached.py)."""
        from .ops import attached

        try:
            attached.recover(self.cfg.state_dir, self.reporter, self.status)
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop the agent
            _log.error("attached_recovery_failed", error=str(exc)[:300])

    def _wait_for_stop(self) -> None:
        """Sleep until stop. A signal may be delivered to any thread; the handler only runs once the
        main thread wakes, so the main thread sleeps in select() on the signal wake-up pipe instead
        of in Event.wait(), which such a signal would not interrupt."""
        if self._wake_r < 0:
            while not self.stop_event.wait(3600):
                pass
            return
        while not self.stop_event.is_set():
            select.select([self._wake_r], [], [])
            try:
                os.read(self._wake_r, 512)
            except (BlockingIOError, InterruptedError):
                pass

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

        def handler(signum: int, _frame: object) -> None:
            if signum == signal.SIGINT:
                log.end_terminal_echo()
            name = signal.Signals(signum).name
            if self.stop_event.is_set():  # a second Ctrl-C / SIGTERM: stop waiting for the command
                _log.warn("stop_now", signal=name, hint="ending the running command's process group now")
                if self.dispatcher is not None:
                    self.dispatcher.kill_now()
                return
            _log.info("signal", name=name)
            if signum == signal.SIGINT and self.exit_code == 0:
                self.exit_code = EXIT_SIGINT
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _touch(path: Path) -> None:
    try:
        path.touch(mode=0o600)  # also updates the mtime of an existing file
    except OSError:
        pass

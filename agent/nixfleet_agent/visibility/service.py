"""One object the agent holds: refreshes needs-reboot and drift (cheaply: cached by links and
ref stats), adds them to heartbeats, keeps a copy in the state file for ``nixfleet-agent status``,
rewrites the Prometheus text file when a value changed, and owns the automatic reboot's timer.

``tick`` runs on the heartbeat thread at every heartbeat interval; while nothing changed it reads
three links and stats three files and starts no child process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import buildinfo, log
from . import record
from .autoreboot import AutoReboot
from .drift import Drift, DriftState
from .needsreboot import PARTS, RebootCheck, RebootState
from .promfile import FILE_NAME, Family, render, write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..host.status import StatusStore

_log = log.get("visibility")
STATUS_KEY = "visibility"
TEXTFILE_REFRESH = 3600.0  # rewritten at least hourly, so the file's mtime shows the agent lives
REASONS = (*PARTS, "boot-pending")
ANNOUNCE_WAIT = 10.0  # seconds the announcement may take to reach the dashboard


def rfc3339(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class Visibility:
    def __init__(self, cfg: Config, status: StatusStore, repo_path: Path, *, root: Path = Path("/"),
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.status, self.clock = cfg, status, clock
        self.settings = cfg.visibility
        self.reboot = RebootCheck(cfg.platform, root)
        self.drift = Drift(repo_path, cfg.branch or "main")
        self.connected = False
        self.auto: AutoReboot | None = None
        self._lock = threading.RLock()
        self._written: tuple[str, float] | None = None  # text, when
        self._saved: object = None
        self._reboot_state: RebootState | None = None
        self._textfile_error = ""
        record.bind(status, self.tick)

    # ----- values ---------------------------------------------------------------------------------

    def reboot_state(self) -> RebootState:
        return self.reboot.state()

    def drift_state(self) -> DriftState:
        return self.drift.state(record.deployed_commit(self.status))

    def heartbeat_fields(self) -> dict[str, Any]:
        """Extra heartbeat fields; the upstream dashboard decodes heartbeats into a fixed struct
        and ignores them (docs/visibility.md cites where)."""
        with self._lock:  # the heartbeat thread and a finishing command may ask at once
            rb, dr = self.reboot_state(), self.drift_state()
        now = self.clock()
        planned = self.auto.planned if self.auto is not None else None
        return {
            "reboot": {**rb.as_dict(), "auto": {"allowed": self.settings.reboot_allow,
                                                "window": self.settings.window_text,
                                                "planned_at": rfc3339(planned)}},
            "drift": {
                "deployed_commit": dr.deployed_commit or None,
                "remote_commit": dr.remote_commit or None,
                "commits_behind": dr.commits_behind,
                "behind_since": rfc3339(dr.behind_since),
                "lock_last_modified": rfc3339(dr.lock_last_modified),
                "lock_age_days": None if dr.lock_last_modified is None
                else max(0, int(now - dr.lock_last_modified) // 86400),
                "detail": dr.detail,
            },
        }

    def families(self) -> list[Family]:
        rb, dr = self.reboot_state(), self.drift_state()
        sw = record.switch_record(self.status)
        found = sw.get("last")
        last: dict[str, Any] = found if isinstance(found, dict) else {}
        counts = record.counters(self.status)
        fams = [
            Family("nixfleet_agent_info", "gauge", "The running agent: version and the commit it was built from.",
                   [((("version", buildinfo.version()), ("source_commit", buildinfo.source_commit())), 1)]),
            Family("nixfleet_agent_connected", "gauge", "1 while the agent is registered with the dashboard.",
                   [((), 1 if self.connected else 0)]),
        ]
        if isinstance(last.get("at"), int):
            fams.append(Family("nixfleet_agent_last_switch_timestamp_seconds", "gauge",
                               "When the last switch, boot or rollback operation finished (Unix time).",
                               [((), last["at"])]))
            fams.append(Family("nixfleet_agent_last_switch_success", "gauge",
                               "1 if the last switch, boot or rollback operation succeeded, 0 if it failed.",
                               [((("action", str(last.get("action", ""))),), 1 if last.get("ok") else 0)]))
        if isinstance(sw.get("last_ok_at"), int):
            fams.append(Family("nixfleet_agent_last_successful_switch_timestamp_seconds", "gauge",
                               "When the last successful switch, boot or rollback finished (Unix time).",
                               [((), sw["last_ok_at"])]))
        if dr.deployed_commit:
            fams.append(Family("nixfleet_agent_deployed_commit_info", "gauge",
                               "The fleet repository commit this host was last switched to by the agent.",
                               [((("commit", dr.deployed_commit), ("branch", self.drift.branch)), 1)]))
        if dr.commits_behind is not None:
            fams.append(Family("nixfleet_agent_commits_behind", "gauge",
                               "Commits on the remote branch (as of the last fetch) the deployed commit lacks.",
                               [((), dr.commits_behind)]))
        if dr.behind_since is not None:
            fams.append(Family("nixfleet_agent_oldest_undeployed_commit_timestamp_seconds", "gauge",
                               "Committer time of the oldest branch commit the host does not run (Unix time).",
                               [((), dr.behind_since)]))
        if dr.lock_last_modified is not None:
            fams.append(Family("nixfleet_agent_flake_lock_last_modified_timestamp_seconds", "gauge",
                               "Newest lastModified of all inputs in the deployed commit's flake.lock (Unix time).",
                               [((), dr.lock_last_modified)]))
        if dr.lock_inputs:
            fams.append(Family("nixfleet_agent_flake_input_last_modified_timestamp_seconds", "gauge",
                               "lastModified of each direct flake input in the deployed flake.lock (Unix time).",
                               [((("input", name),), stamp) for name, stamp in dr.lock_inputs]))
        if rb.needed is not None:
            fams.append(Family("nixfleet_agent_needs_reboot", "gauge",
                               "1 if the booted kernel, initrd or modules differ from the current system, "
                               "or a boot generation is pending.", [((), 1 if rb.needed else 0)]))
            fams.append(Family("nixfleet_agent_needs_reboot_reason", "gauge",
                               "1 for each reason a reboot is needed (kernel, initrd, kernel-modules, boot-pending).",
                               [((("reason", r),), 1 if r in rb.reasons else 0) for r in REASONS]))
        planned = self.auto.planned if self.auto is not None else None
        if planned is not None:
            fams.append(Family("nixfleet_agent_reboot_planned_timestamp_seconds", "gauge",
                               "When the automatic reboot is planned (Unix time).", [((), planned)]))
        fams.append(Family("nixfleet_agent_health_check_failures", "counter",
                           "Failed health checks since the counters were created.",
                           [((), counts["health_check_failures"])]))
        fams.append(Family("nixfleet_agent_rollbacks", "counter",
                           "Automatic rollbacks since the counters were created.", [((), counts["rollbacks"])]))
        return fams

    # ----- the heartbeat thread -------------------------------------------------------------------

    def tick(self, connected: bool | None = None) -> None:
        """Refresh; save a changed summary for ``status``; rewrite a changed metrics file.
        Never raises: it runs on the heartbeat thread, which must outlive any bug here."""
        try:
            self._tick(connected)
        except Exception as exc:  # noqa: BLE001
            _log.error("visibility_tick_failed", error=repr(exc)[:300])

    def _tick(self, connected: bool | None) -> None:
        with self._lock:
            if connected is not None:
                self.connected = connected
            rb = self.reboot_state()
            if self.auto is not None and rb != self._reboot_state:
                self.auto.poke()
            self._reboot_state = rb
            summary = self.heartbeat_fields()
            summary["drift"].pop("lock_age_days")  # a day count would rewrite the state file daily
            summary["drift"]["lock_inputs"] = dict(self.drift_state().lock_inputs)
            if summary != self._saved:
                self._saved = summary
                self.status.note(STATUS_KEY, summary)
            self._write_textfile()

    def _write_textfile(self) -> None:
        directory = self.settings.textfile_directory
        if not directory:
            return
        text = render(self.families())
        now = self.clock()
        if self._written is not None and self._written[0] == text and now - self._written[1] < TEXTFILE_REFRESH:
            return
        try:
            write_atomic(Path(directory), text)
        except OSError as exc:
            error = exc.strerror or str(exc)
            if error != self._textfile_error:  # one log line per distinct problem, not per tick
                _log.warn("textfile_write_failed", path=str(Path(directory) / FILE_NAME), error=error)
                self._textfile_error = error
            return
        self._textfile_error = ""
        self._written = (text, now)

    # ----- the automatic reboot -------------------------------------------------------------------

    def start(self, busy: Callable[[], bool], run_exclusive: Callable[[str, Callable[[Any], None]], bool] | None,
              stop: threading.Event) -> None:
        """Start the automatic reboot's timer thread (only with ``reboot.allow``)."""
        if not self.settings.reboot_allow:
            return
        if self.cfg.platform == "home-manager" or run_exclusive is None:
            _log.warn("auto_reboot_unavailable", platform=self.cfg.platform,
                      hint="reboot.allow needs the NixOS or nix-darwin module (a root side); ignored")
            return
        _log.info("auto_reboot_enabled", window=self.settings.window_text,
                  randomized_delay_sec=self.settings.randomized_delay_sec)

        def fire(reason: str) -> bool:
            from ..commands import control  # the reboot command's own path (root unit on NixOS)

            def body(job: Any) -> None:
                job.say(f"🔁 Automatic reboot: {reason}; rebooting now")
                _log.info("auto_reboot", reason=reason)
                job.ctx.reporter.wait_delivered(ANNOUNCE_WAIT)  # seen before the host goes down
                control.reboot(job.ctx)

            return run_exclusive("reboot", body)

        def why_not() -> str:
            if busy():
                return "a command is running"
            return "" if self.connected else "dashboard not connected (the reboot is announced there first)"

        self.auto = AutoReboot(self.settings, self.reboot_state, why_not, fire, clock=self.clock, stop=stop)
        self.auto.start()

    def stop(self) -> None:
        if self.auto is not None:
            self.auto.stop()

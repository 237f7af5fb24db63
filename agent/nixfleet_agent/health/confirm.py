"""The agent's half of ``require_reconnect`` on NixOS: tell root "I registered again".

Root writes ``<result dir>/health.json`` (``state = "checking"``, ``awaiting_confirmation``,
``since`` = when activation ended) once the new generation is active. The agent following the
switch then

- exits with ``restart_exit_code`` when the switch changed its own service definition or package
  (the agent unit is not restarted by activation): the confirmation must come from the *new*
  agent, with the new configuration, which systemd starts next and which resumes this switch;
- otherwise registers with the dashboard again (the running agent *is* the new one) and, once a
  registration newer than ``since`` has been acknowledged, writes ``privileged/confirm.json``
  ``{"id": <request id>}`` atomically (0600, one link; root reads it like the request).

Nothing here can keep a bad generation: without this file root rolls back at the grace period's
end (health/gate.py says why the file is safe to take from the agent).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import log
from ..privatefs import write_private

if TYPE_CHECKING:  # pragma: no cover
    from ..commands import Job
    from ..ops.journal import Operation

_log = log.get("health")
_lock = threading.Lock()
_last_registered = 0.0
POLL = 0.2


def note_registered() -> None:
    """Called for every ``registered`` the dashboard sends (agent.Agent._registered)."""
    global _last_registered
    with _lock:
        _last_registered = time.time()


def last_registered() -> float:
    with _lock:
        return _last_registered


def marker_path(op: Operation) -> Path:
    return Path(op.result_path).parent / "health.json"


def confirm_path(state_dir: Path) -> Path:
    return Path(state_dir) / "privileged" / "confirm.json"


def read_marker(path: Path, op_id: str) -> dict[str, object] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("id") == op_id else None


class Confirmer:
    """One thread per followed privileged switch; ends with the follow (``stop``)."""

    def __init__(self, op: Operation, state_dir: Path, say: Callable[[str], None], reconnect: Callable[[], None],
                 restart: Callable[[], tuple[bool, str]], exit_for_restart: Callable[[], None],
                 stop: threading.Event) -> None:
        self.op, self.state_dir, self.say = op, Path(state_dir), say
        self.reconnect, self.restart, self.exit_for_restart = reconnect, restart, exit_for_restart
        self.agent_stop = stop
        self.done = threading.Event()
        self.confirmed = False
        self.thread = threading.Thread(target=self._run, name=f"health-confirm-{op.id}", daemon=True)

    def start(self) -> Confirmer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.done.set()

    def _wait(self, seconds: float) -> bool:
        """True when the follow ended or the agent stops."""
        return self.done.wait(seconds) or self.agent_stop.is_set()

    def _run(self) -> None:
        marker = marker_path(self.op)
        while True:
            doc = read_marker(marker, self.op.id)
            if doc is not None:
                break
            if self._wait(POLL):
                return
        if doc.get("state") != "checking" or doc.get("awaiting_confirmation") is not True:
            return
        since = doc.get("since")
        grace = doc.get("grace_period")
        if not isinstance(since, (int, float)) or not isinstance(grace, int):
            return
        needed, why = self.restart()
        if needed:
            self.say(f"health: {why}: the agent restarts so that the new agent confirms the switch")
            _log.info("confirm_by_new_agent", id=self.op.id, reason=why)
            self.exit_for_restart()
            return
        if last_registered() < since:
            self.say("health: registering with the dashboard again to confirm the switch to root")
            self.reconnect()
        deadline = time.monotonic() + grace
        while last_registered() < since:
            if self._wait(POLL) or time.monotonic() > deadline:
                return
        write_private(confirm_path(self.state_dir), json.dumps({"id": self.op.id}), durable=True)
        self.confirmed = True
        _log.info("confirmed", id=self.op.id)
        self.say("health: registered with the dashboard again; confirmed to root")


def start(job: Job, op: Operation) -> Confirmer | None:
    """The follow's hook (commands/rebuild.py): a confirmer for privileged switches."""
    if op.launcher != "privileged" or op.action != "switch":
        return None
    from ..commands import agentpkg

    ctx = job.ctx
    return Confirmer(op, ctx.cfg.state_dir, job.say, ctx.reporter.request_reconnect,
                     lambda: agentpkg.restart_needed(ctx.cfg.platform, op.agent_before),
                     lambda: ctx.reporter.request_exit(ctx.cfg.restart_exit_code), ctx.stop_event).start()

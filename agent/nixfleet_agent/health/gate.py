"""The root side of a health-gated switch (NixOS; nix-darwin uses the same code without units).

Order, all decided by root alone:

1. a commit on the bad list is refused (rule ``bad_commit``) unless the request says ``force``;
2. the previous generation is recorded: the system profile's link and the store path it names;
3. ``nixos-rebuild switch``; if the profile did not move, nothing was activated: done;
4. after activation: the checks (``checks.Runner``) until all pass or the grace period ends, and
   with ``require_reconnect`` the agent's confirmation that it registered with the dashboard
   again (``privileged/confirm.json`` ``{"id": <request id>}``), within the same deadline;
5. any failure (activation exit status, a check, no confirmation): with ``on_failure =
   "rollback"`` the recorded previous generation is made the profile again and activated, and the
   commit goes on the bad list; with ``"report"`` the host stays on the new generation.

Why the confirmation is safe to take from the agent: it is read like the request (no link
followed, a regular single-link file of the request directory's owner, tiny, removed on read), and
it can only choose between two generations root itself verified: the new one, built from a commit
root fetched and checked, and the previous one, which was the running system. A missing or wrong
confirmation means "go back", which the agent could ask for anyway (``rollback``); a confirmation
never overrides a failed check. A killed agent writes nothing, so root goes back alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .. import log, nix
from ..root.request import RequestError, read_request
from ..root.source import Refusal
from . import badlist, pending
from .checks import Runner
from .settings import HealthSettings

_log = log.get("health")
SYSTEM_PROFILE = Path(nix.SYSTEM_PROFILE)
CONFIRM_POLL = 0.5
CONFIRM_MAX_BYTES = 512

Run = Callable[[list[str]], tuple[int, str]]


@dataclass
class Gate:
    settings: HealthSettings
    bad: badlist.BadList
    confirm_path: Path
    profile: Path = SYSTEM_PROFILE
    nix_env: str = "nix-env"
    systemctl: str = "systemctl"
    darwin: bool = False
    interval: float = 2.0
    state_dir: Path | None = None  # root's state: the pending record (health/pending.py)
    poll: Callable[[], None] = lambda: None  # raises to end the wait (root's cancel request and deadline)
    fields: dict[str, object] = field(default_factory=dict)

    def refuse_bad(self, commit: str, force: bool, out: BinaryIO) -> None:
        if not self.settings.enable:
            return
        entry = self.bad.find(commit)
        if self.bad.problem:
            _log.warn("bad_list_unreadable", problem=self.bad.problem)
            out.write(f"nixfleet-agent-privileged: warning: {self.bad.problem}\n".encode())
        if entry is None:
            return
        if not force:
            raise Refusal("bad_commit", badlist.refusal_text(entry))
        out.write(f"nixfleet-agent-privileged: health: {commit} is on the bad list; switching anyway (force)\n"
                  .encode())

    def switch(self, commit: str, request_id: str, owner: int, argv: list[str], run: Run, out: BinaryIO,
               marker: Callable[[dict[str, object]], None],
               activated: Callable[[], bool] = lambda: True) -> tuple[int, str]:
        """Run the rebuild gated by the checks; (exit code, error). ``self.fields`` gets what
        result.json adds: ``health``, ``rolled_back``, ``failed_checks``, ``bad_commits``."""
        def say(line: str) -> None:
            out.write(f"nixfleet-agent-privileged: {line}\n".encode())

        prev_link, prev = _profile(self.profile)
        baseline: frozenset[str] = frozenset()
        if self.settings.enable and self.settings.no_failed_units and not self.darwin:
            before, _ = Runner(self.settings, systemctl=self.systemctl).failed_units()
            baseline = frozenset(before or ())
        self._take_confirmation(request_id, owner)  # a stale one must not confirm this switch
        record = None
        if self.settings.enable and self.settings.rollback and prev and self.state_dir is not None:
            record = pending.new(request_id, owner, commit, prev)  # until the verdict: undone if root dies
            pending.begin(self.state_dir, record)
        code, error = run(argv)
        if not self.settings.enable:
            return code, error
        _, new = _profile(self.profile)
        if record is not None and self.state_dir is not None and new != prev:
            pending.begin(self.state_dir, dataclasses.replace(record, new=new))
        outcome = self._verdict(commit, request_id, owner, prev_link, prev, new, baseline, argv, code, error, run,
                                say, marker, activated)
        if record is not None and self.state_dir is not None:
            pending.clear(self.state_dir)  # not on an exception: the run's end recovers it (root/main.py)
        return outcome

    def _verdict(self, commit: str, request_id: str, owner: int, prev_link: str, prev: str, new: str, baseline: frozenset[str],
                 argv: list[str], code: int, error: str, run: Run, say: Callable[[str], None],
                 marker: Callable[[dict[str, object]], None], activated: Callable[[], bool]) -> tuple[int, str]:
        if code == 0 and not activated():  # e.g. switch inhibited, ran boot: the new generation does not run yet
            self.fields = {"health": "skipped", "rolled_back": False}
            say("health: the new generation is only the boot default (not activated); no checks until it runs")
            return code, error
        if not prev or new == prev:
            self.fields = {"health": "skipped", "rolled_back": False}
            if code == 0:
                say("health: the system generation did not change; no checks" if prev else
                    "health: no previous system generation to go back to; no checks")
            return code, error
        say(f"health: previous generation {prev_link or prev} ({prev}), new {new}")
        failed: list[str] = []
        pinned = False
        if code != 0:
            failed.append(f"activation: {argv[0].rsplit('/', 1)[-1]} exited {code}")
        else:
            pinned = self._pin_boot_default(prev, say, run)
            grace = self.settings.grace_period
            deadline = time.monotonic() + grace
            marker({"id": request_id, "state": "checking", "awaiting_confirmation": self.settings.require_reconnect,
                    "since": time.time(), "grace_period": grace})
            runner = Runner(self.settings, systemctl=self.systemctl, units_available=not self.darwin, as_root=True,
                            baseline_failed=baseline)
            report = runner.run(deadline, say, interval=self.interval, poll=self.poll)
            failed += [f"{o.name}: {o.detail}" for o in report.failed]
            if report.healthy:
                say(f"health: all checks passed after {report.elapsed:.1f}s ({report.rounds} rounds)")
                if self.settings.require_reconnect:
                    say("health: waiting for the agent to register with the dashboard again")
                    waited = self._wait_confirmation(request_id, owner, deadline)
                    if waited is None:
                        failed.append(f"reconnect: the agent did not register with the dashboard again within "
                                      f"the grace period ({grace}s)")
                    else:
                        say(f"health: the agent registered again after {waited:.1f}s")
        if not failed:
            self.fields = {"health": "passed", "rolled_back": False,
                           "bad_commits": [e.as_dict() for e in self.bad.remove(commit)]}
            if pinned:
                boot_code, _ = run(nix.boot_default(new))
                if boot_code != 0:
                    self.fields["boot_default_error"] = f"exit {boot_code}"
                    say(f"health: WARNING: making the new generation the boot default again failed (exit "
                        f"{boot_code}); the next reboot starts {prev}")
            marker({"id": request_id, "state": "passed"})
            return 0, ""
        return self._failed(commit, request_id, prev, new, failed, code, say, run, marker)

    def _failed(self, commit: str, request_id: str, prev: str, new: str, failed: list[str], code: int,
                say: Callable[[str], None], run: Run,
                marker: Callable[[dict[str, object]], None]) -> tuple[int, str]:
        what = "; ".join(failed)
        _log.warn("health_failed", commit=commit, failed=what)
        self.fields = {"health": "failed", "rolled_back": False, "failed_checks": failed}
        if not self.settings.rollback:
            say(f"health: FAILED ({what}); staying on the new generation (on_failure = report)")
            marker({"id": request_id, "state": "failed"})
            self.fields["bad_commits"] = [e.as_dict() for e in self.bad.load()]
            return code or 1, f"health: {what}; not rolled back (onFailure = report), the host runs {new}"
        say(f"health: FAILED ({what}); rolling back to {prev}")
        rb_code, rb_error = run(nix.set_profile(self.profile, prev, nix_env=self.nix_env))
        if rb_code == 0:
            rb_code, rb_error = run(nix.activate(prev, darwin=self.darwin))
        entries = self.bad.add(commit, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), what)
        self.fields["bad_commits"] = [e.as_dict() for e in entries]
        marker({"id": request_id, "state": "failed"})
        short = commit[:7]
        if rb_code != 0:
            self.fields["rollback_error"] = rb_error or f"exit {rb_code}"
            say(f"health: ROLLBACK FAILED (exit {rb_code}); the host may run {new}")
            return rb_code, (f"health: {what}; rollback to {prev} FAILED (exit {rb_code}{': ' + rb_error if rb_error else ''})"
                             f"; commit {short} is refused on this host from now on")
        self.fields["rolled_back"] = True
        self.fields["rolled_back_to"] = prev
        if not self.darwin:
            run(nix.restart_agent(self.systemctl))
        _, now = _profile(self.profile)
        say(f"health: rolled back; the host runs {now} again; commit {short} is refused from now on")
        return code or 1, (f"health: {what}; rolled back to the previous generation {prev}; commit {short} "
                           "is refused on this host until a newer commit or force")

    def _pin_boot_default(self, prev: str, say: Callable[[str], None], run: Run) -> bool:
        """Until the verdict the boot default is the previous generation: a host that the new one
        hangs or resets during the grace period comes back on the generation known to be good."""
        if self.darwin or not self.settings.rollback:
            return False
        pin_code, _ = run(nix.boot_default(prev))
        if pin_code != 0:
            say(f"health: WARNING: could not make the previous generation the boot default during the grace "
                f"period (exit {pin_code}); a reboot before the verdict starts the new one")
            return False
        say("health: the previous generation is the boot default until the checks pass")
        return True

    # -- the agent's confirmation --------------------------------------------------------------------
    def _take_confirmation(self, request_id: str, owner: int) -> bool:
        """True if the confirmation file names this request (and was written by its agent)."""
        try:
            got = read_request(self.confirm_path, CONFIRM_MAX_BYTES)
        except (RequestError, OSError) as exc:
            _log.warn("confirmation_refused", error=str(exc))
            return False
        if got is None:
            return False
        data, writer = got
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            doc = None
        if writer != owner or not isinstance(doc, dict) or set(doc) != {"id"} or doc["id"] != request_id:
            _log.warn("confirmation_ignored", expected=request_id, got=json.dumps(doc)[:100] if doc else "unreadable")
            return False
        return True

    def _wait_confirmation(self, request_id: str, owner: int, deadline: float) -> float | None:
        started = time.monotonic()
        while True:
            self.poll()
            if self._take_confirmation(request_id, owner):
                return time.monotonic() - started
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(CONFIRM_POLL, remaining))


def _profile(profile: Path) -> tuple[str, str]:
    """(link text, store path) of the system profile, ("", "") when there is none."""
    try:
        link = os.readlink(profile)
    except OSError:
        link = ""
    return link, os.path.realpath(profile) if os.path.exists(profile) else ""

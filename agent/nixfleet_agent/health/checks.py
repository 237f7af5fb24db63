"""Run every configured check, round after round, until all pass or the grace period ends.

Why rounds: a service that crashes a second after it started is ``active`` first and ``failed``
(or ``activating (auto-restart)``) soon after, so one passing look proves little. The host is
healthy when every check passed in :data:`STABLE_ROUNDS` rounds in a row; every wait has a
deadline (each probe gets at most :data:`PROBE_TIMEOUT`, never beyond the grace period) and rounds
are :data:`ROUND_INTERVAL` apart, waiting on an event, never spinning.

One output line per check result (its first result and every change), so the dashboard sees
checks stream by without a line per check every two seconds. The ``systemctl`` command lines are
built here and nowhere else.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .settings import CommandCheck, HealthSettings, HttpCheck, TcpCheck

ROUND_INTERVAL = 2.0
STABLE_ROUNDS = 2
PROBE_TIMEOUT = 10.0


# ----- the systemctl command lines (root: system manager; Home Manager: --user) ---------------------

def is_active_argv(systemctl: str, unit: str, user: bool = False) -> list[str]:
    return [systemctl, *(["--user"] if user else []), "is-active", "--", unit]


def failed_units_argv(systemctl: str, user: bool = False) -> list[str]:
    return [systemctl, *(["--user"] if user else []), "list-units", "--failed", "--plain", "--no-legend",
            "--no-pager"]


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"health: {'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


@dataclass
class Report:
    healthy: bool
    elapsed: float
    rounds: int
    failed: list[Outcome]

    def failed_text(self) -> str:
        return "; ".join(f"{o.name}: {o.detail}" for o in self.failed)


Check = Callable[[float], Outcome]  # argument: seconds this probe may take at most


class Runner:
    """The checks of one ``HealthSettings`` for one host (``user``: a Home Manager user manager)."""

    def __init__(self, settings: HealthSettings, *, systemctl: str = "systemctl", user_manager: bool = False,
                 units_available: bool = True, as_root: bool | None = None,
                 baseline_failed: frozenset[str] = frozenset()) -> None:
        self.s = settings
        # units already failed before the switch: not this switch's doing (and, left in, every
        # later switch would be rolled back for them); said once in the first line
        self.baseline_failed = baseline_failed
        self.systemctl = systemctl
        self.user_manager = user_manager
        self.units_available = units_available  # macOS: no systemd, unit checks are left out (and said so)
        self.as_root = os.geteuid() == 0 if as_root is None else as_root

    def checks(self) -> list[Check]:
        out: list[Check] = []
        if self.units_available:
            out += [self._unit(u) for u in self.s.units]
            if self.s.no_failed_units:
                out.append(self._no_failed)
        out += [self._http(h) for h in self.s.http]
        out += [self._tcp(t) for t in self.s.tcp]
        out += [self._command(c) for c in self.s.commands]
        return out

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, deadline: float, emit: Callable[[str], None], stop: threading.Event | None = None,
            interval: float = ROUND_INTERVAL, extra: Sequence[Check] = (),
            poll: Callable[[], None] = lambda: None) -> Report:
        """Until every check passed :data:`STABLE_ROUNDS` rounds in a row, or ``deadline``
        (``time.monotonic()``). ``extra`` checks (e.g. the agent's own re-registration) count too.
        ``poll`` runs before every round and may raise to end the checks (root: a cancel request)."""
        stop = stop or threading.Event()
        checks = self.checks() + list(extra)
        started = time.monotonic()
        last: dict[str, Outcome] = {}
        passed_in_row = rounds = 0
        if not self.units_available and (self.s.units or self.s.no_failed_units):
            emit("health: unit checks skipped: no systemd on this host")
        emit(f"health: {len(checks)} check(s), grace period {max(0.0, deadline - started):.0f}s")
        if self.baseline_failed and self.units_available and self.s.no_failed_units:
            emit("health: already failed before the switch, not counted: " + ", ".join(sorted(self.baseline_failed)))
        results: list[Outcome] = []
        while True:
            poll()
            rounds += 1
            results = []
            for check in checks:
                budget = min(PROBE_TIMEOUT, deadline - time.monotonic())
                outcome = check(max(0.1, budget))
                results.append(outcome)
                before = last.get(outcome.name)
                if before is None or before.ok != outcome.ok or (not outcome.ok and before.detail != outcome.detail):
                    emit(outcome.line())
                last[outcome.name] = outcome
            failed = [o for o in results if not o.ok]
            passed_in_row = 0 if failed else passed_in_row + 1
            if passed_in_row >= STABLE_ROUNDS or not checks:
                return Report(True, time.monotonic() - started, rounds, [])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.wait(min(interval, remaining)) or time.monotonic() >= deadline:
                if not failed and passed_in_row:  # passed once at the very end: not yet proven stable
                    failed = [Outcome("stable", False, f"passed {passed_in_row} of {STABLE_ROUNDS} rounds "
                                                        "in a row before the grace period ended")]
                return Report(False, time.monotonic() - started, rounds, failed)

    # -- the kinds -----------------------------------------------------------------------------------
    def _capture(self, argv: list[str], timeout: float) -> tuple[int, str]:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                  check=False, env=_env())
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {timeout:.0f}s"
        except OSError as exc:
            return 127, f"cannot run {argv[0]}: {exc.strerror or exc}"
        text = (done.stdout or done.stderr).decode(errors="replace").strip()
        return done.returncode, text

    def _unit(self, unit: str) -> Check:
        def check(timeout: float) -> Outcome:
            code, text = self._capture(is_active_argv(self.systemctl, unit, self.user_manager), timeout)
            state = text.splitlines()[-1] if text else f"exit {code}"
            return Outcome(f"unit {unit}", code == 0 and state == "active", state)
        return check

    def failed_units(self, timeout: float = PROBE_TIMEOUT) -> tuple[list[str] | None, str]:
        """(failed unit names, or None when systemctl failed; its message)."""
        code, text = self._capture(failed_units_argv(self.systemctl, self.user_manager), timeout)
        if code != 0:
            return None, text or f"exit {code}"
        names = [line.replace("●", " ").replace("*", " ", 1).split() for line in text.splitlines()]
        return [n[0] for n in names if n], ""

    def _no_failed(self, timeout: float) -> Outcome:
        units, error = self.failed_units(timeout)
        if units is None:
            return Outcome("no failed units", False, f"systemctl list-units failed: {error}")
        units = [u for u in units if u not in self.s.ignore_failed_units and u not in self.baseline_failed]
        return Outcome("no failed units", not units, "none failed" if not units else "failed: " + ", ".join(units))

    def _http(self, spec: HttpCheck) -> Check:
        def check(timeout: float) -> Outcome:
            import http.client  # here: an agent built without ssl still starts (tests/core)
            import ssl

            name = f"http {spec.url}"
            parts = urlsplit(spec.url)
            host, path = parts.hostname or "", (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            # http.client, not urllib: no proxy from the environment, no redirect followed
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
            try:
                conn.request("GET", path, headers={"User-Agent": "nixfleet-agent-health"})
                status = conn.getresponse().status
            except (OSError, http.client.HTTPException) as exc:
                return Outcome(name, False, f"no answer: {getattr(exc, 'strerror', None) or exc}")
            finally:
                conn.close()
            return Outcome(name, status == spec.status,
                           f"status {status}" + ("" if status == spec.status else f", expected {spec.status}"))
        return check

    def _tcp(self, spec: TcpCheck) -> Check:
        def check(timeout: float) -> Outcome:
            try:
                with socket.create_connection((spec.host, spec.port), timeout=timeout):
                    return Outcome(f"tcp {spec.address}", True, "connected")
            except OSError as exc:
                return Outcome(f"tcp {spec.address}", False, f"cannot connect: {exc.strerror or exc}")
        return check

    def _command(self, spec: CommandCheck) -> Check:
        def check(timeout: float) -> Outcome:
            name = f"command {' '.join(spec.argv)}" + (f" (as {spec.user})" if spec.user else "")
            kwargs: dict[str, object] = {}
            env = _env()
            if spec.user:
                try:
                    pw = pwd.getpwnam(spec.user)
                except KeyError:
                    return Outcome(name, False, f"no user {spec.user}")
                if pw.pw_uid != os.geteuid():
                    if not self.as_root:
                        return Outcome(name, False, f"cannot run as {spec.user}: the checks run as "
                                                    f"{pwd.getpwuid(os.geteuid()).pw_name}")
                    kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
                env["HOME"] = pw.pw_dir
            try:
                done = subprocess.run(list(spec.argv), stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=timeout, check=False, cwd="/", env=env,
                                      start_new_session=True, **kwargs)  # type: ignore[call-overload]
            except subprocess.TimeoutExpired:
                return Outcome(name, False, f"timed out after {timeout:.0f}s")
            except OSError as exc:
                return Outcome(name, False, f"cannot run: {exc.strerror or exc}")
            tail = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
            detail = f"exit {done.returncode}" + (f": {tail[-1][:200]}" if tail and done.returncode else "")
            return Outcome(name, done.returncode == 0, detail)
        return check


_KEPT = ("PATH", "LANG", "LC_ALL", "TZ",
         # where `systemctl --user` finds the user manager (Home Manager); neither is a secret
         "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")


def _env() -> dict[str, str]:
    """Checks see a plain environment: PATH, the locale and the user manager's address, nothing else
    the caller was given (without the last two every `systemctl --user` check failed: "Failed to
    connect to bus")."""
    return {k: v for k, v in os.environ.items() if k in _KEPT} or {"PATH": "/usr/bin:/bin"}


def monotonic_deadline(seconds: float) -> float:
    return time.monotonic() + seconds

"""Home Manager on Linux: the detached switch in its own transient user unit (``systemd-run --user``).

Why: the agent runs as a systemd user unit. A process it starts in a new session (``setsid``) is
still in that unit's control group, and any restart of the unit - Home Manager activating a
changed ``nixfleet-agent.service``, a crash with ``Restart=always``, an admin's ``systemctl --user
restart`` - kills the whole group: home-manager gets SIGTERM halfway through activation (issue 13
item 2). A transient unit is a control group of its own, owned by the user manager, so the switch
runs to its end whatever happens to the agent, and the agent that comes back follows it.

Chosen for a detached operation when a user manager answers (:func:`why_unavailable`); elsewhere
(macOS launchd, a Linux session without a user manager, a system unit) the wrapper runs in its
own session as before. Every ``systemd-run`` command line is built here, in :func:`run_argv`:

- ``--unit=nixfleet-agent-switch-<id>.service`` (journal.switch_unit: the record names it, and a
  follower after a restart asks the manager about exactly that unit);
- ``--collect``: unique names must not pile up as failed units; how a unit ended is kept anyway,
  in the result file (next point), before the manager forgets it;
- ``ExecStopPost=-<wrapper> --post``: a unit that stops without a result (its wrapper SIGKILLed,
  OOM-killed, ``systemctl --user kill``) still gets one, naming ``$SERVICE_RESULT`` (``-``: its
  own failure cannot fail the unit);
- ``--service-type=exec``: ``systemd-run`` returns once the wrapper was executed, so a launch that
  cannot run fails at once, visibly, instead of later as "the unit ended";
- ``UMask=`` the agent's own, so activation creates files as it did from the agent's session;
- no ``--setenv``/``Environment=``: the agent's environment (minus its secrets) goes to the
  wrapper in the private launch file, never in an argv or a unit's environment.

Liveness while following is :class:`~nixfleet_agent.ops.liveness.UnitWatch` (``systemctl --user
show`` of that unit); ``stop``/``kill`` signal the wrapper's process group by its pid, the unit's
main pid, as for a detached session.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .. import log as logmod
from .journal import Operation, ops_dir
from .operations import WRAPPER_PATH, wrapper_argv, write_launch
from .oplog import MAX_BYTES
from .runner import child_env

_log = logmod.get("transient")

PROBE_TIMEOUT = 5.0
RUN_TIMEOUT = 30.0
# An argument systemd would change: `$X` is expanded in ExecStart=, `%x` is a specifier, and
# ExecStopPost= is split at whitespace and unquoted. The state dir almost never has one; if it
# does, the switch runs in a detached session instead.
_PLAIN = re.compile(r"[A-Za-z0-9/._+,:=@-]+")


def why_unavailable(state_dir: Path, env: dict[str, str] | None = None) -> str | None:
    """None when a detached switch can run in a transient user unit; otherwise why not."""
    environ = os.environ if env is None else env
    if not sys.platform.startswith("linux"):
        return "not Linux"
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if not runtime:
        return "no XDG_RUNTIME_DIR (no systemd user manager)"
    if not Path(runtime, "systemd", "private").is_socket():
        return f"no user manager socket in {runtime}/systemd"
    for tool in ("systemd-run", "systemctl"):
        if shutil.which(tool, path=environ.get("PATH")) is None:
            return f"{tool} not on PATH"
    odd = [a for a in (sys.executable, str(WRAPPER_PATH), str(ops_dir(state_dir))) if not _PLAIN.fullmatch(a)]
    if odd:
        return f"path {odd[0]!r} has characters systemd would change"
    try:
        probe = subprocess.run(["systemctl", "--user", "show", "--property=Version", "--value"],
                               capture_output=True, text=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL,
                               check=False, env=dict(environ))
    except (OSError, subprocess.SubprocessError) as exc:
        return f"systemctl --user: {exc}"
    if probe.returncode != 0 or not probe.stdout.strip():
        return f"the user manager does not answer ({_last_line(probe.stderr) or f'exit {probe.returncode}'})"
    return None


def run_argv(op: Operation, launch: Path, umask: str | None = None) -> list[str]:
    """The ``systemd-run`` command line of one operation (see the module doc for each option)."""
    post = " ".join(["-" + wrapper_argv()[0], *wrapper_argv("--post", op.result_path, op.unit)[1:]])
    argv = ["systemd-run", "--user", "--quiet", "--collect", f"--unit={op.unit}", "--service-type=exec",
            f"--description=nixfleet-agent {op.command} {op.id}", f"--property=ExecStopPost={post}"]
    if umask:
        argv.append(f"--property=UMask={umask}")
    return [*argv, "--", *wrapper_argv(str(launch))]


def main_pid_argv(unit: str) -> list[str]:
    return ["systemctl", "--user", "show", "--property=MainPID", "--value", unit]


def own_umask() -> str | None:
    """This process's umask as systemd writes it (``0077``), read without changing it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return line.split()[1]
    except OSError:
        pass
    return None


class TransientLauncher:
    """Start the wrapper as ``nixfleet-agent-switch-<id>.service`` of the user manager."""

    name = "transient"

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes

    def start(self, op: Operation) -> int | None:
        env = child_env()
        launch = write_launch(op, self.max_bytes, env=env)
        try:
            done = subprocess.run(run_argv(op, launch, own_umask()), capture_output=True, text=True,
                                  timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, check=False, env=env)
        except subprocess.TimeoutExpired:
            raise OSError(f"systemd-run --user did not return within {RUN_TIMEOUT:.0f}s") from None
        if done.returncode != 0:
            try:
                launch.unlink()
            except OSError:
                pass
            raise OSError(f"systemd-run --user failed (exit {done.returncode}): {_last_line(done.stderr)}")
        pid = main_pid(op.unit, env)
        _log.info("transient_unit_started", unit=op.unit, pid=pid)
        return pid


def main_pid(unit: str, env: dict[str, str] | None = None) -> int | None:
    """The unit's main pid (the wrapper), or None once it ended or when it cannot be known."""
    try:
        out = subprocess.run(main_pid_argv(unit), capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                             stdin=subprocess.DEVNULL, check=False, env=env)
        pid = int(out.stdout.strip() or 0)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return pid or None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""

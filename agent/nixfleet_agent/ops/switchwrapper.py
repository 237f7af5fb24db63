"""The switch wrapper: runs one detached switch/rollback, bounds its log, always writes a result.

Run as a script (``python -I <this file> <launch file>``), never imported by the agent: it
outlives the agent (its own session, or its own transient user unit), so it depends on nothing but
the standard library and ``logcap.py`` next to it (the same log rule as the agent's, see there),
loaded by path: isolated mode keeps ``PYTHON*`` variables, the user site and the script's own
directory (whose module names could shadow the standard library's) out of ``sys.path``.

- ``<launch file>`` (``operations/<id>.launch``, private, JSON) names the result and log paths,
  the working directory, the argv, the log limit and, for a transient unit (whose environment is
  the user manager's, not the agent's), the environment. It is removed once read: the environment
  is not kept, and it never appears in an argv or a unit's environment.
- The child's stdout+stderr go through a pipe to the log, cut at the limit with the visible
  marker; the pipe is drained to the end either way, so a chatty child never blocks. Reading stops
  ``GRACE`` seconds after the child exited if a grandchild keeps the pipe open.
- SIGTERM/SIGHUP/SIGINT get no-op handlers (not SIG_IGN, so the child keeps default
  dispositions after exec): ``stop`` reaches the child through the process group and the wrapper
  still records how it ended.
- ``--post <result> <unit>`` is the transient unit's ``ExecStopPost=``: when the unit stopped
  without a result (the wrapper was SIGKILLed, OOM-killed, ``systemctl --user kill``), it writes one
  naming how systemd saw the unit end (``$SERVICE_RESULT``, ``$EXIT_CODE``, ``$EXIT_STATUS``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

try:
    from . import logcap
except ImportError:  # run as a script (``-I``: no script directory on sys.path): load the file next to us
    import importlib.util

    _spec = importlib.util.spec_from_file_location("logcap", os.path.join(os.path.dirname(__file__), "logcap.py"))
    assert _spec is not None and _spec.loader is not None
    logcap = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(logcap)

CHUNK = 64 * 1024
GRACE = 5.0


def write_result(path: str, out: dict[str, object]) -> None:
    out["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(out, fh)
    os.replace(tmp, path)


def _write_all(fd: int, data: bytes) -> bool:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        return False  # disk full or gone: stop writing, keep draining
    return True


def relay(src: int, fd: int, cap: logcap.Cap, proc: subprocess.Popen[bytes]) -> None:
    """Copy the child's output to the log under the cap until EOF (or GRACE after it exited)."""
    writable = True
    quiet_since = None
    while True:
        ready, _, _ = select.select([src], [], [], 0.5)
        if ready:
            chunk = os.read(src, CHUNK)
            if not chunk:
                return
            quiet_since = None
            kept, cut = cap.take(chunk)
            if writable and kept:
                writable = _write_all(fd, kept)
            if writable and cut is not None:
                writable = _write_all(fd, cut.encode())
            continue
        if proc.poll() is not None:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= GRACE:
                return


def run(launch_path: str) -> int:
    with open(launch_path, encoding="utf-8") as fh:
        job = json.load(fh)
    os.unlink(launch_path)
    result, log, cwd, argv = job["result"], job["log"], job.get("cwd") or None, job["argv"]
    env = job.get("env")
    for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: None)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    cap = logcap.opened(log, int(job["max_bytes"]), logcap.DROPPED)
    out: dict[str, object] = {"exit_code": 1, "signal": None}
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, close_fds=True)
    except OSError as e:
        why = "not found" if isinstance(e, FileNotFoundError) else (e.strerror or str(e))
        msg = "cannot start %s: %s" % (argv[0] if argv else "(empty)", why)
        _write_all(fd, (msg + "\n").encode())
        out = {"exit_code": 127 if isinstance(e, FileNotFoundError) else 126, "signal": None, "error": msg}
    else:
        assert proc.stdout is not None
        relay(proc.stdout.fileno(), fd, cap, proc)
        code = proc.wait()
        out = {"exit_code": code if code >= 0 else 128 - code, "signal": -code if code < 0 else None}
    write_result(result, out)
    return 0


def post(result: str, unit: str) -> int:
    """ExecStopPost=: the unit stopped; write a result if the wrapper could not."""
    if os.path.exists(result):
        return 0
    how = os.environ.get("SERVICE_RESULT", "?")
    kind, status = os.environ.get("EXIT_CODE", "?"), os.environ.get("EXIT_STATUS", "?")
    sig = None
    if kind in ("killed", "dumped"):
        try:
            sig = int(signal.Signals["SIG" + status])
        except KeyError:
            sig = None
    code = 128 + sig if sig else (int(status) if status.isdigit() and int(status) else 1)
    write_result(result, {"exit_code": code, "signal": sig, "error": (
        f"the switch unit {unit} ended without a result "
        f"(SERVICE_RESULT={how}, EXIT_CODE={kind}, EXIT_STATUS={status})")})
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "--post":
        return post(argv[2], argv[3])
    if len(argv) != 2:
        print("usage: switchwrapper.py <launch file> | --post <result> <unit>", file=sys.stderr)
        return 2
    return run(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))

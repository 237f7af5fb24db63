"""``restart`` and ``reboot`` (``stop``/``kill`` live in the dispatcher, they need its PID state).

``restart`` sends its ``status`` first (upstream sent none, leaving the op stuck until the hard
timeout) and then asks the agent to exit with ``restart_exit_code`` so the service manager starts
it again. ``reboot`` runs on its own thread (upstream slept 3 s in the message loop), uses
``sudo -n`` when not root (a password prompt would hang forever) and reports failure as a
``status`` error instead of an output line only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .. import log as logmod
from ..kinds import Action, CommandStatus, LaunchMode
from ..ops import operations, oplog
from ..ops.runner import Result
from ..ops.runner import run as run_child
from . import Context, open_command_log, privileged_switch, sudo_n

_log = logmod.get("control")

REBOOT_DELAY = 3.0
PRIVILEGED_REBOOT_WAIT = 30.0


class _Logged:
    """``restart``/``reboot`` run outside the one-command slot (they must work while a command is
    busy), so they keep their own op log, as every command does, next to streaming to the dashboard."""

    def __init__(self, ctx: Context, command: str) -> None:
        self.ctx, self.command = ctx, command
        self.log = open_command_log(ctx, command)

    def output(self, line: str, stream: str = "stdout") -> None:
        self.log.write(line, stream)
        self.ctx.reporter.output(self.command, line, stream)

    def status(self, status: CommandStatus, exit_code: int, message: str) -> None:
        self.log.write(f"# status={status} exit_code={exit_code} message={message}")
        self.log.close()
        self.ctx.reporter.status(self.command, status, exit_code, message)


def restart(ctx: Context) -> None:
    code = ctx.cfg.restart_exit_code
    out = _Logged(ctx, "restart")
    out.output(f"♻️  Restarting agent (exit {code})...")
    out.status("ok", 0, "restarting")
    _log.info("restart_requested", exit_code=code)
    ctx.reporter.request_exit(code)


def reboot_argv() -> list[str]:
    if sys.platform == "darwin":
        argv = ["shutdown", "-r", "now"]
    else:
        argv = ["systemctl", "reboot"]
    return sudo_n(argv)


def reboot(ctx: Context) -> None:
    out = _Logged(ctx, "reboot")
    out.output("⚠️  Reboot command received. System will reboot in 3 seconds...")
    if ctx.stop_event.wait(REBOOT_DELAY):
        out.status("error", 1, "agent shutting down; reboot cancelled")
        return
    if privileged_switch(ctx.cfg):
        result = _privileged_reboot(ctx)
    else:
        result = run_child(reboot_argv(), command="reboot", reporter=ctx.reporter, log=out.log)
    if result.ok:
        out.status("ok", 0, "reboot initiated")
        return
    why = result.describe()
    out.output(f"❌ Reboot failed: {why}. Check sudo permissions.", "stderr")
    out.status("error", result.exit_code or 1, f"reboot failed: {why}")


def _privileged_reboot(ctx: Context) -> Result:
    """NixOS / nix-darwin modules: the agent has no sudo; ask the root unit (action ``reboot``) and wait briefly."""
    op_id = oplog.new_op_id()
    launcher = operations.PrivilegedLauncher(Path(ctx.cfg.state_dir))
    log_path, result_path = operations.paths_for(ctx.cfg.state_dir, ctx.cfg.privileged_dir, op_id, "privileged")
    op = operations.Operation(id=op_id, command="reboot", action=Action.REBOOT, argv=["systemctl", "reboot"],
                              launcher=LaunchMode.PRIVILEGED, log_path=str(log_path), result_path=str(result_path))
    try:
        launcher.start(op)
    except OSError as exc:
        return Result(exit_code=1, start_error=f"cannot write privileged request: {exc.strerror or exc}")
    deadline = time.monotonic() + PRIVILEGED_REBOOT_WAIT
    while time.monotonic() < deadline:
        result = operations.read_result(result_path)
        if result is not None:
            return result
        if ctx.stop_event.wait(0.1):
            break
    if launcher.request_path().exists():
        try:
            launcher.request_path().unlink()
        except OSError:
            pass
        return Result(exit_code=1, start_error="privileged reboot request was not picked up "
                                               "(is nixfleet-agent-privileged.path enabled?)")
    return Result(exit_code=0)  # picked up; the machine is going down before it could answer

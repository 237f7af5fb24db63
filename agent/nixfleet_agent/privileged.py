"""Root side of the NixOS privileged switch channel (``nixfleet-agent-privileged``).

The agent runs as an unprivileged DynamicUser and cannot switch the system. It drops
``<state>/privileged/request.json``; a path unit starts this program as root (contract:
docs/architecture.md, "Privileged switch channel"). Separation only protects root if this side
trusts nothing the agent wrote: the request is opened without following symlinks (in every
directory the agent controls), size-limited, removed before use, and checked field by field
against an allowlist. Only exactly the requested commit of the agent's clone is built
(``git+file://<repo>?rev=<sha>#<attr>``), never whatever its work tree holds.

Results go to ``<out-dir>/<id>/`` (root-owned, world-readable): ``output.log`` streamed while the
action runs, then ``result.json``. A request whose id is unusable is answered with
``<out-dir>/rejected.json``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import log
from .kinds import Action

ACTIONS = tuple(action.value for action in Action)
BUILD_ACTIONS = ("switch", "boot", "test")
FIELDS = ("id", "action", "commit", "flake_attr", "refresh")
# force-update/force-rebuild: a substitute that was missing a minute ago may be there now
NO_NEGATIVE_CACHE = ("--option", "narinfo-cache-negative-ttl", "0")
MAX_REQUEST_BYTES = 4096
REJECTED_EXIT = 2

_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_ATTR = re.compile(r"[A-Za-z0-9._-]{1,63}")

_log = log.get("privileged")


class RequestError(Exception):
    """A refused request: ``field`` names the culprit, ``request_id`` is set when usable."""

    def __init__(self, field: str, message: str, request_id: str | None = None, action: str = "") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.request_id = request_id
        self.action = action


@dataclass(frozen=True)
class Request:
    id: str
    action: str
    commit: str
    flake_attr: str
    refresh: bool = False


def _open_dir_nofollow(path: Path) -> int:
    """Open a directory walking from ``/`` with O_NOFOLLOW at every step.

    A symlinked component (e.g. the agent replacing ``privileged/`` with a link to ``/etc``)
    fails with ELOOP/ENOTDIR instead of redirecting root's reads and unlinks.
    """
    if not path.is_absolute():
        raise ValueError(f"{path} is not an absolute path")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        for part in path.parts[1:]:
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        raise
    return fd


def read_request(path: Path, limit: int = MAX_REQUEST_BYTES) -> bytes | None:
    """Return the request's bytes and remove it; None when there is no request.

    The file is removed even when refused, so the path unit does not fire again for it.
    """
    try:
        dir_fd = _open_dir_nofollow(path.parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RequestError("request", f"directory {path.parent} is not a plain directory ({exc.strerror})") from None
    try:
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _remove(path.name, dir_fd)
            if exc.errno == errno.ELOOP:
                raise RequestError("request", f"{path} is a symlink; refusing to follow it") from None
            raise RequestError("request", f"cannot open {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            owner = os.fstat(dir_fd).st_uid
            _remove(path.name, dir_fd)
            if not stat.S_ISREG(info.st_mode):
                raise RequestError("request", f"{path} is not a regular file")
            # a hard link or someone else's file is not a request the agent wrote
            if info.st_nlink != 1 or info.st_uid != owner:
                raise RequestError("request", f"{path} is not a file of the directory's owner with a single link")
            if info.st_size > limit:
                raise RequestError("request", f"{path} is larger than {limit} bytes ({info.st_size})")
            data = os.read(fd, limit + 1)
            if len(data) > limit:
                raise RequestError("request", f"{path} is larger than {limit} bytes")
            return data
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _remove(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass  # a directory or already gone: nothing we may safely do about it


def parse_request(data: bytes) -> Request:
    """Validate every field; raise RequestError naming the first bad one."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError("request", f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RequestError("request", f"must be a JSON object, got {type(doc).__name__}")

    raw_id = doc.get("id")
    if not isinstance(raw_id, str) or not _ID.fullmatch(raw_id) or raw_id.startswith("."):
        raise RequestError("id", f"must match [A-Za-z0-9._-]{{1,64}} and not start with '.' (got {_show(raw_id)})")
    request_id = raw_id

    action = doc.get("action")
    shown_action = action if isinstance(action, str) and action in ACTIONS else ""
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise RequestError(unknown[0], "unknown field", request_id, shown_action)
    if action not in ACTIONS:
        raise RequestError("action", f"not allowed (got {_show(action)}; allowed: {', '.join(ACTIONS)})", request_id)

    commit = doc.get("commit", "")
    attr = doc.get("flake_attr", "")
    needs_build = action in BUILD_ACTIONS
    if not isinstance(commit, str) or ((needs_build or commit) and not _COMMIT.fullmatch(commit)):
        raise RequestError("commit", f"must be a full 40-hex lowercase commit id (got {_show(commit)})",
                           request_id, action)
    if not isinstance(attr, str) or ((needs_build or attr) and not _ATTR.fullmatch(attr)):
        raise RequestError("flake_attr", f"must match [A-Za-z0-9._-]{{1,63}} (got {_show(attr)})", request_id, action)
    refresh = doc.get("refresh", False)
    if not isinstance(refresh, bool):
        raise RequestError("refresh", f"must be true or false (got {_show(refresh)})", request_id, action)
    return Request(id=request_id, action=action, commit=commit, flake_attr=attr, refresh=refresh)


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:80] + "..."


# Settings that override the clone's own .git/config (which the agent controls) for every git
# run as root: trust exactly that repository (never ``*``), and never let its configuration run a
# program (hooks, fsmonitor).
_GIT_OVERRIDES = (("safe.directory", None), ("core.hooksPath", "/dev/null"), ("core.fsmonitor", "false"))


def git_env(repo: Path, base: Mapping[str, str]) -> dict[str, str]:
    """Environment for root's git (and Nix's git fetcher) on a clone another uid owns."""
    env = {k: v for k, v in base.items() if not k.startswith("GIT_CONFIG_")}
    for index, (key, value) in enumerate(_GIT_OVERRIDES):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = str(repo) if value is None else value
    env.update({"GIT_CONFIG_COUNT": str(len(_GIT_OVERRIDES)), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"})
    return env


def action_argv(req: Request, repo: Path, nixos_rebuild: str, systemctl: str) -> list[str]:
    if req.action in BUILD_ACTIONS:
        argv = [nixos_rebuild, req.action, "--flake", f"git+file://{repo}?rev={req.commit}#{req.flake_attr}"]
        return [*argv, *NO_NEGATIVE_CACHE] if req.refresh else argv
    if req.action == "rollback":
        return [nixos_rebuild, "switch", "--rollback"]
    return [systemctl, "reboot"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_json(directory: Path, name: str, doc: Mapping[str, object]) -> None:
    tmp = directory / f".{name}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, directory / name)


class Handler:
    """Runs one request: owns the output directory layout and the child process."""

    def __init__(self, repo: Path, out_dir: Path, nixos_rebuild: str, systemctl: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.repo = repo
        self.out_dir = out_dir
        self.nixos_rebuild = nixos_rebuild
        self.systemctl = systemctl
        self.env = git_env(repo, os.environ if env is None else env)

    def reject(self, err: RequestError) -> int:
        _log.warn("rejected", id=err.request_id, field=err.field, error=str(err))
        self.out_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        op_dir = self._new_op_dir(err.request_id) if err.request_id else None
        doc: dict[str, object] = {"exit_code": REJECTED_EXIT, "error": str(err), "finished_at": _now()}
        if op_dir is None:
            if err.request_id:
                doc["id"] = err.request_id
            _write_json(self.out_dir, "rejected.json", doc)
            return REJECTED_EXIT
        with open(op_dir / "output.log", "w", encoding="utf-8") as out:
            out.write(f"nixfleet-agent-privileged: request rejected: {err}\n")
        os.chmod(op_dir / "output.log", 0o644)
        _write_json(op_dir, "result.json", {"id": err.request_id, "action": err.action, **doc})
        return REJECTED_EXIT

    def _new_op_dir(self, request_id: str) -> Path | None:
        op_dir = self.out_dir / request_id
        try:
            op_dir.mkdir(mode=0o755)
        except FileExistsError:
            return None  # a replayed id must not overwrite an earlier result
        return op_dir

    def run(self, req: Request) -> int:
        self.out_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        op_dir = self._new_op_dir(req.id)
        if op_dir is None:
            _write_json(self.out_dir, "rejected.json", {"id": req.id, "exit_code": REJECTED_EXIT, "finished_at": _now(),
                                                        "error": f"id: {req.id} was already used"})
            _log.warn("rejected", id=req.id, field="id", error="already used")
            return REJECTED_EXIT
        log_path = op_dir / "output.log"
        with open(log_path, "wb", buffering=0) as out:
            os.chmod(log_path, 0o644)
            exit_code, error = self._execute(req, out)
        doc: dict[str, object] = {"id": req.id, "action": req.action, "exit_code": exit_code, "finished_at": _now()}
        if error:
            doc["error"] = error
        _write_json(op_dir, "result.json", doc)
        _log.info("finished", id=req.id, action=req.action, exit_code=exit_code, error=error or None)
        return 0 if exit_code == 0 else 1

    def _execute(self, req: Request, out: BinaryIO) -> tuple[int, str]:
        if req.action in BUILD_ACTIONS:
            missing = self._commit_missing(req.commit, out)
            if missing:
                out.write(f"nixfleet-agent-privileged: {missing}\n".encode())
                return REJECTED_EXIT, missing
        argv = action_argv(req, self.repo, self.nixos_rebuild, self.systemctl)
        _log.info("starting", id=req.id, action=req.action, argv=" ".join(argv))
        out.write(f"nixfleet-agent-privileged: running {' '.join(argv)}\n".encode())
        return self._spawn(argv, out)

    def _commit_missing(self, commit: str, out: BinaryIO) -> str:
        code, _ = self._spawn(["git", "-C", str(self.repo), "cat-file", "-e", f"{commit}^{{commit}}"], out)
        return "" if code == 0 else f"commit: {commit} is not a commit in {self.repo}"

    def _spawn(self, argv: Sequence[str], out: BinaryIO) -> tuple[int, str]:
        """Run with output going straight to the log file: streamed, nothing buffered here."""
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env, cwd="/", start_new_session=True)
        except OSError as exc:
            message = f"cannot start {argv[0]}: {exc.strerror or exc}"
            out.write(f"nixfleet-agent-privileged: {message}\n".encode())
            return 127, message
        code = proc.wait()
        return (128 - code, "") if code < 0 else (code, "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nixfleet-agent-privileged",
        description="Run one privileged switch request of the NixFleet agent (started by "
                    "nixfleet-agent-privileged.path as root).")
    parser.add_argument("--request", type=Path, required=True, help="request file the agent writes")
    parser.add_argument("--repo", type=Path, required=True, help="the agent's clone to build from")
    parser.add_argument("--out-dir", type=Path, required=True, help="root-owned directory for results")
    parser.add_argument("--nixos-rebuild", default="nixos-rebuild", help="nixos-rebuild executable")
    parser.add_argument("--systemctl", default="systemctl", help="systemctl executable (reboot)")
    parser.add_argument("--log-level", default="info", choices=sorted(log.LEVELS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.setup(args.log_level)
    os.umask(0o022)
    for name in ("request", "repo", "out_dir"):
        if not getattr(args, name).is_absolute():
            _log.error("bad-argument", option=name.replace("_", "-"), error="must be an absolute path")
            return REJECTED_EXIT
    handler = Handler(args.repo, args.out_dir, args.nixos_rebuild, args.systemctl)
    try:
        try:
            data = read_request(args.request)
            if data is None:
                _log.info("no-request", path=str(args.request))
                return 0
            req = parse_request(data)
        except RequestError as err:
            return handler.reject(err)
        return handler.run(req)
    except OSError as exc:  # e.g. the output directory is not writable: say so, no traceback
        _log.error("failed", error=f"{exc.filename or ''}: {exc.strerror or exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The environment every git child of the agent runs in, and the one place git is run internally.

Why a dedicated module: the isolated clone is fed from a remote the agent does not control, so git
must never execute code from it (hooks, fsmonitor), never wait for a human (password prompts, host
key questions), never hang forever on a dead network, and never leak a credential that sits in a
URL into a log line or a dashboard message. All of that is decided here, once, and applied to the
clone, the pull, ``nix flake update`` (whose git fetches inherit the environment) and the push.

Settings go through ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` rather than the
repository's ``.git/config``: environment config wins over repository config, so a clone whose
config was tampered with (``core.hooksPath`` pointing into the work tree) still runs no hooks.
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..redact import redact

# argv, env, cwd -> exit code; streams the child's output to the dashboard and the op log.
RunFn = Callable[[Sequence[str], Mapping[str, str] | None, Path | None], int]

# Variables that would point git at another repository or index than the one we name with -C.
_REPO_LOCATORS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_CEILING_DIRECTORIES",
)

# Lines that name the real cause; git's own "fatal: Could not read from remote repository" does not.
_ROOT_CAUSES = (
    "Host key verification failed",
    "Permission denied",
    "Could not resolve hostname",
    "Connection refused",
    "Connection timed out",
    "No route to host",
    "not found in upstream origin",
    "does not appear to be a git repository",
    "Authentication failed",
    "could not read Username",
    "The requested URL returned error",
    "unable to access",
    "read only",
    "read-only",
    "ERROR:",
    "remote error:",
)


def state_fingerprint(repo: Path, *extra: Path) -> tuple[object, ...] | None:
    """A value that changes whenever HEAD can have moved (and the ``extra`` files changed), read
    with stat() alone - so an idle heartbeat need not start a ``git`` child to learn that nothing
    changed. HEAD's text, and the stat of HEAD, the ref it names, packed-refs and a reftable's
    table list cover every way git moves a branch. None (no cheap answer: a worktree whose ``.git``
    is a file, an unreadable HEAD) means: ask git."""
    git = repo / ".git"
    try:
        if not git.is_dir():
            return None
        head = (git / "HEAD").read_bytes()
    except OSError:
        return None
    paths = [git / "HEAD", git / "packed-refs", git / "reftable" / "tables.list", *extra]
    if head.startswith(b"ref: "):
        paths.append(git / head[5:].strip().decode("utf-8", "replace"))
    signature: list[object] = [head]
    for path in paths:
        try:
            st = path.stat()
            signature.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            signature.append(None)
    return tuple(signature)


class KeyFileError(Exception):
    """The SSH key is unusable; the message says which file and how to fix it."""


def url_has_credentials(url: str) -> bool:
    return redact(url) != url


def is_http_url(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def check_key_file(path: Path) -> None:
    """Refuse a key that others can read: ssh would refuse it too, but with a message nobody sees.

    A group-readable key owned by another user (a secret shared with the agent's group) is
    accepted, as ssh accepts it.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"ssh_key_file: {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"ssh_key_file: {path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"ssh_key_file: {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    # ssh refuses a key of ours that group or others can read; a world-readable key is never private.
    if mode & 0o007 or (mode & 0o070 and st.st_uid == os.geteuid()):
        raise KeyFileError(
            f"ssh_key_file: {path} has mode {mode:04o}, readable by other users; "
            f"ssh refuses such keys. Fix it with: chmod 600 {shlex.quote(str(path))}"
        )
    if not os.access(path, os.R_OK):
        raise KeyFileError(f"ssh_key_file: {path} is not readable by uid {os.geteuid()}")


def ssh_command(
    key: Path | None,
    known_hosts: Path | None,
    strict: bool,
    connect_timeout: int,
) -> str:
    """The ``GIT_SSH_COMMAND``: batch mode (never a prompt), bounded connect and stall times.

    ``strict`` pins the host keys to ``known_hosts`` alone (the global file is ignored so a pinned
    setting means exactly what it says); otherwise unknown hosts are accepted once and remembered.
    """
    alive_interval = 15
    argv = ["ssh"]
    if key is not None:
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    argv += [
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={max(1, connect_timeout)}",
        "-o", f"ServerAliveInterval={alive_interval}",
        "-o", f"ServerAliveCountMax={max(1, connect_timeout // alive_interval)}",
    ]  # fmt: skip
    if known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if strict:
            argv += ["-o", "GlobalKnownHostsFile=/dev/null"]
    argv += ["-o", f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}"]
    return shlex.join(argv)


def hygiene_config(timeout: int) -> list[tuple[str, str]]:
    """Settings forced on every git invocation (see module docstring for why via the environment)."""
    return [
        ("core.hooksPath", "/dev/null"),
        ("core.fsmonitor", "false"),
        ("http.lowSpeedLimit", "1000"),
        ("http.lowSpeedTime", str(max(1, timeout))),
        ("commit.gpgSign", "false"),
        ("tag.gpgSign", "false"),
        ("advice.detachedHead", "false"),
    ]


def build_env(
    base: Mapping[str, str],
    *,
    timeout: int,
    ssh: str | None,
    extra_config: Sequence[tuple[str, str]] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A full child environment: ``base`` plus the hygiene settings, appended after any
    ``GIT_CONFIG_*`` entries the caller's environment already had (later entries win)."""
    env = {k: v for k, v in base.items() if k not in _REPO_LOCATORS}
    try:
        count = int(env.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        count = 0
    for key, value in [*hygiene_config(timeout), *extra_config]:
        env[f"GIT_CONFIG_KEY_{count}"] = key
        env[f"GIT_CONFIG_VALUE_{count}"] = value
        count += 1
    env["GIT_CONFIG_COUNT"] = str(count)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GCM_INTERACTIVE"] = "never"
    env.pop("GIT_ASKPASS", None)
    env.pop("SSH_ASKPASS", None)
    if ssh is not None:
        env["GIT_SSH_COMMAND"] = ssh
        env.pop("GIT_SSH", None)
    if extra:
        env.update(extra)
    return env


@dataclass
class GitResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def lines(self) -> list[tuple[str, str]]:
        """(line, stream) pairs, redacted, for relaying to a log or the dashboard."""
        out = [(redact(line), "stdout") for line in self.stdout.splitlines() if line.strip()]
        err = [(redact(line), "stderr") for line in self.stderr.splitlines() if line.strip()]
        return out + err

    def error_text(self) -> str:
        """The most telling line of a failure (git puts ``fatal:`` last), redacted."""
        if self.timed_out:
            return "timed out"
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        causes = [line for line in lines if any(cause in line for cause in _ROOT_CAUSES)]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:", "ERROR:"))]
        pick = (causes or fatal or lines or [f"exit status {self.exit_code}"])[-1]
        return redact(pick)


def run_captured(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: Path | None,
    timeout: float | None,
    on_pid: Callable[[int | None], None] | None = None,
) -> GitResult:
    """Run a short command to completion with captured output and a hard deadline.

    For checks and small steps whose output we need to read (rev-parse, get-url, fsck, push).
    The child gets its own session so a timeout kills ssh along with git; stdin is /dev/null so
    nothing can ever wait for input; files it creates are private (umask 077). ``on_pid`` hears
    the child's PID and then None, so a network step (push) can be ``stop``ped like any command.
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            umask=0o077,
        )
    except OSError as exc:
        return GitResult(127, "", f"fatal: cannot run {argv[0]}: {exc.strerror}")
    if on_pid is not None:
        on_pid(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        timed_out = True
    finally:
        if on_pid is not None:
            on_pid(None)
    return GitResult(
        proc.returncode if not timed_out else 124,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
        timed_out,
    )

"""The repository the agent builds from: its own isolated clone, or (deprecated) the user's checkout.

Isolated mode (``repo_url`` set) treats ``<state_dir>/repo`` as a disposable mirror of one remote
branch: it is validated at start, cloned when missing, moved aside to ``repo.broken`` and cloned
again when it is not what it should be, and every pull is fetch + ``reset --hard`` + ``clean
-ffdx`` so no local state (a half-finished update, a stray file, a tampered config) ever survives
into a build. Nothing here merges or prompts. A failed clone raises :class:`RepoError`; the agent
keeps running, reports it, and calls :meth:`Repo.ensure` again later (``pull`` retries at once).

Legacy mode (``config_repo``/``repo_dir`` without ``repo_url``) only runs ``git pull --ff-only``
on the user's checkout, never resets it: it is the user's working copy.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from . import gitenv
from .. import log
from ..config import Config
from .gitenv import RunFn

__all__ = ["Repo", "RepoError", "RunFn", "ensure_private_dir"]

_log = log.get("repo")

DEPRECATION = (
    "config_repo (NIXFLEET_NIXCFG) is deprecated: the agent pulls the user's checkout with "
    "'git pull --ff-only'. Set repo_url (services.nixfleet-agent.repoUrl) so the agent manages its "
    "own isolated clone; config_repo will be removed in a future version."
)
CHECK_TIMEOUT = 30.0  # local git checks (rev-parse, get-url) never legitimately take longer
STALE_LOCK_AGE = 10.0  # seconds; no git step of ours holds a lock file that long without touching it

Emit = Callable[[str, str], None]  # (line, stream) -> None; relays a note to the dashboard


class RepoError(Exception):
    """The repository is unusable; the message is redacted and says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(gitenv.redact(message))


def _remove_tree(path: Path, ignore_errors: bool = False) -> None:
    """``shutil.rmtree``, imported on use: shutil brings bz2/lzma along, and an agent whose clone
    is healthy never removes a tree."""
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)


def ensure_private_dir(path: Path, what: str) -> None:
    """Create ``path`` 0700 or make an existing one private; refuse when it is not ours.

    Group/world access is removed silently-but-logged when we own the directory; a directory owned
    by someone else cannot be fixed without privileges we should not have, so the agent refuses
    with a message naming the path and the fix.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise RepoError(f"{what}: cannot create directory {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RepoError(f"{what}: {path} exists but is not a directory")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise RepoError(
            f"{what}: {path} is owned by uid {st.st_uid}, but the agent runs as uid {uid}; "
            f"give it to the agent (chown {uid} {path}) or point {what} elsewhere"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        try:
            path.chmod(mode & 0o700 | 0o700)
        except OSError as exc:
            raise RepoError(f"{what}: {path} has mode {mode:04o} and cannot be made private: {exc.strerror}") from None
        _log.warn("permissions_fixed", path=path, old_mode=f"{mode:04o}", new_mode="0700")


class Repo:
    """One per agent. Thread-safe: the clone-retry thread, the command worker and the heartbeat
    may call in concurrently; anything that changes the clone holds ``_lock``."""

    def __init__(self, cfg: Config, emit: Emit | None = None) -> None:
        self.cfg = cfg
        self.isolated = bool(cfg.repo_url)
        self.path = Path(cfg.repo_dir) if str(cfg.repo_dir or "") else Path(cfg.state_dir) / "repo"
        self._generation_cache: tuple[tuple[object, ...], str] | None = None
        self.broken_path = self.path.with_name(self.path.name + ".broken")
        self.branch = cfg.branch or "main"
        self.url = cfg.repo_url
        self.last_error = ""
        self._emit_fn = emit
        self._call_emit: Emit | None = None
        self._lock = threading.RLock()
        self._ready = False

    # ----- environment ---------------------------------------------------------------------------

    def ssh_key(self) -> Path | None:
        if self.cfg.ssh_key_file:
            return Path(self.cfg.ssh_key_file)
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and Path(creds, "ssh-key").is_file():
            return Path(creds, "ssh-key")
        return None

    def git_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The full environment for a git (or nix) child: ``os.environ`` plus hygiene and SSH.

        Raises RepoError when the configured SSH key is unusable (loose permissions, missing).
        """
        key = self.ssh_key()
        if key is not None:
            try:
                gitenv.check_key_file(key)
            except gitenv.KeyFileError as exc:
                raise RepoError(str(exc)) from None
        pinned = str(self.cfg.known_hosts_file or "")
        if pinned and not Path(pinned).is_file():
            raise RepoError(f"known_hosts_file: {pinned} does not exist (it pins the repository host's SSH key)")
        if self.isolated or key is not None:
            known = Path(pinned) if pinned else Path(self.cfg.state_dir) / "known_hosts"
            ssh: str | None = gitenv.ssh_command(key, known, bool(pinned), min(self.cfg.git_timeout, 30))
        else:
            ssh = None  # the user's own checkout keeps the user's own ssh setup
        return gitenv.build_env(os.environ, timeout=self.cfg.git_timeout, ssh=ssh, extra=extra)

    def author_env(self) -> dict[str, str]:
        name = self.cfg.git_author_name or "nixfleet-agent"
        email = self.cfg.git_author_email or f"nixfleet-agent@{self.cfg.hostname}"
        return {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }

    def git(self, *args: str, timeout: float | None = CHECK_TIMEOUT, env: Mapping[str, str] | None = None,
            on_pid: Callable[[int | None], None] | None = None) -> gitenv.GitResult:
        """Run git on the clone with captured output (for checks and short steps)."""
        return gitenv.run_captured(["git", "-C", str(self.path), *args], env or self.git_env(), None, timeout, on_pid)

    def emit(self, line: str, stream: str = "stdout") -> None:
        target = self._call_emit or self._emit_fn
        if target is not None:
            target(gitenv.redact(line), stream)

    @contextmanager
    def emitting(self, emit: Emit | None) -> Iterator[None]:
        """Route notes to this command's output for the duration of one call (lock held)."""
        with self._lock:
            previous = self._call_emit
            self._call_emit = emit or previous
            try:
                yield
            finally:
                self._call_emit = previous

    def deprecation_notice(self) -> str | None:
        """The legacy-mode warning, for the log at start and an output line at registration."""
        return None if self.isolated else DEPRECATION

    # ----- facts for heartbeats ------------------------------------------------------------------

    def head(self) -> str:
        if not (self.path / ".git").exists():
            return ""
        try:
            env = gitenv.build_env(os.environ, timeout=self.cfg.git_timeout, ssh=None)
            result = self.git("rev-parse", "--verify", "-q", "HEAD^{commit}", timeout=10, env=env)
        except OSError:
            return ""
        sha = result.stdout.strip()
        return sha if result.ok and len(sha) >= 40 else ""

    def generation(self) -> str:
        """HEAD's short hash; git runs only when ``gitenv.state_fingerprint`` says HEAD may have
        moved (an idle heartbeat starts no child process)."""
        fingerprint = gitenv.state_fingerprint(self.path)
        cached = self._generation_cache
        if fingerprint is not None and cached is not None and cached[0] == fingerprint:
            return cached[1]
        value = self.head()[:7]
        self._generation_cache = (fingerprint, value) if fingerprint is not None and value else None
        return value

    def lock_hash(self) -> str:
        try:
            return hashlib.sha256((self.path / "flake.lock").read_bytes()).hexdigest()
        except OSError:
            return ""

    def ready(self) -> bool:
        return self._ready

    # ----- validation ----------------------------------------------------------------------------

    def problem(self, thorough: bool = True) -> str | None:
        """Why the clone is unusable (``"missing"`` when absent), or None when it is fine."""
        if not self.path.exists():
            return "missing"
        if self.path.is_dir() and not any(self.path.iterdir()):
            return "missing"
        if not (self.path / ".git").is_dir():
            return "not a git clone (no .git directory)"
        env = gitenv.build_env(os.environ, timeout=self.cfg.git_timeout, ssh=None)
        top = self.git("rev-parse", "--show-toplevel", env=env)
        if not top.ok:
            return f"not a git work tree ({top.error_text()})"
        if Path(top.stdout.strip()).resolve() != self.path.resolve():
            return f"work tree root is {top.stdout.strip()}, not {self.path}"
        origin = self.git("remote", "get-url", "origin", env=env)
        if not origin.ok:
            return "has no 'origin' remote"
        if origin.stdout.strip() != self.url:
            return f"origin is {origin.stdout.strip()}, not repo_url {self.url}"
        ref = self.git("symbolic-ref", "-q", "HEAD", env=env)
        if ref.stdout.strip() != f"refs/heads/{self.branch}":
            return f"checked-out branch is {ref.stdout.strip() or 'detached'}, not {self.branch}"
        if not self.git("rev-parse", "--verify", "-q", f"refs/remotes/origin/{self.branch}^{{commit}}", env=env).ok:
            return f"remote branch origin/{self.branch} missing or unreadable"
        if not self.git("rev-parse", "--verify", "-q", "HEAD^{commit}", env=env).ok:
            return "HEAD does not resolve to a commit"
        if thorough:
            fsck = self.git(
                "fsck", "--connectivity-only", "--no-dangling", "--no-progress",
                timeout=min(self.cfg.git_timeout, 120), env=env,
            )
            if fsck.timed_out:
                _log.warn("fsck_skipped", path=self.path, reason="timed out (repository large); not treated as corrupt")
            elif not fsck.ok:
                return f"corrupt ({fsck.error_text()})"
        return None

    # ----- lifecycle -----------------------------------------------------------------------------

    def ensure(self, run: RunFn | None = None, thorough: bool = True) -> None:
        """Make the repository usable or raise RepoError (redacted, actionable).

        ``run`` streams a clone's output (a command passes its RunFn); at start-up the clone runs
        with captured output relayed to the log.
        """
        with self._lock:
            try:
                if self.isolated:
                    self._ensure_isolated(run, thorough)
                else:
                    self._ensure_legacy()
            except RepoError as exc:
                self._ready = False
                self.last_error = str(exc)
                _log.error("repo_unusable", path=self.path, error=self.last_error)
                raise
            self._ready = True
            self.last_error = ""

    def _ensure_legacy(self) -> None:
        if self.cfg.config_repo and self.cfg.repo_url:
            raise RepoError("config_repo and repo_url are both set: set only repo_url (config_repo is deprecated)")
        _log.warn("deprecated_config_repo", path=self.path, message=DEPRECATION)
        if not self.path.is_dir():
            raise RepoError(f"config_repo: {self.path} does not exist; set repo_url to let the agent clone the repository")
        env = gitenv.build_env(os.environ, timeout=self.cfg.git_timeout, ssh=None)
        top = self.git("rev-parse", "--show-toplevel", env=env)
        if not top.ok:
            raise RepoError(f"config_repo: {self.path} is not a git checkout ({top.error_text()})")

    def _ensure_isolated(self, run: RunFn | None, thorough: bool) -> None:
        if self.cfg.config_repo:
            raise RepoError("config_repo and repo_url are both set: set only repo_url (config_repo is deprecated)")
        ensure_private_dir(Path(self.cfg.state_dir), "state_dir")
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True)  # an existing parent is the operator's
        env = self.git_env()  # validates the SSH key before any network attempt
        for leftover in self.path.parent.glob(f".{self.path.name}.clone-*"):
            _remove_tree(leftover, ignore_errors=True)  # a clone interrupted by a crash or SIGKILL
        if self.path.is_dir():
            # Ownership first: git refuses a repository owned by someone else ("dubious
            # ownership"), which would otherwise look like corruption and be moved aside.
            ensure_private_dir(self.path, "repo_dir")
        problem = self.problem(thorough)
        if problem is None:
            return
        if problem != "missing":
            self._move_aside(problem)
        elif self.path.exists():
            self.path.rmdir()  # an empty directory (pre-created by a module) is "missing"
        self._clone(run, env)

    def _move_aside(self, problem: str) -> None:
        _log.warn("repo_invalid", path=self.path, problem=gitenv.redact(problem), moved_to=self.broken_path)
        self.emit(
            f"repository at {self.path} is unusable ({problem}); moving it to {self.broken_path} and cloning again",
            "stderr",
        )
        try:
            if self.broken_path.is_symlink() or self.broken_path.is_file():
                self.broken_path.unlink()
            elif self.broken_path.exists():
                _remove_tree(self.broken_path)
            self.path.rename(self.broken_path)
        except OSError as exc:
            raise RepoError(f"repo_dir: cannot move unusable clone {self.path} aside: {exc.strerror or exc}") from None

    def _clone(self, run: RunFn | None, env: Mapping[str, str]) -> None:
        """Clone into a private temporary sibling, then rename: the repo is whole or absent."""
        _log.info("clone_start", url=gitenv.redact(self.url), branch=self.branch, path=self.path)
        self.emit(f"cloning {gitenv.redact(self.url)} (branch {self.branch}) into {self.path}")
        # A unique private sibling, as tempfile.mkdtemp would make it (mkdir is atomic, 0700, never
        # follows a symlink), without importing tempfile and shutil into the long-running agent.
        tmp = self.path.parent / f".{self.path.name}.clone-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir(mode=0o700)
        argv = ["git", "clone", "--branch", self.branch, "--single-branch", "--no-tags", "--", self.url, str(tmp)]
        try:
            if run is not None:
                code, reason, text = run(argv, env, self.path.parent), "", ""
            else:
                result = gitenv.run_captured(argv, env, self.path.parent, self.cfg.git_timeout * 10)
                for line, stream in result.lines():
                    _log.info("git_output", stream=stream, line=line)
                code, reason, text = result.exit_code, result.error_text(), result.stderr
            if code != 0:
                raise RepoError(self._clone_failure(code, reason, text))
            tmp.chmod(0o700)
            tmp.rename(self.path)
        finally:
            if tmp.exists():
                _remove_tree(tmp, ignore_errors=True)
        _log.info("clone_done", path=self.path, head=self.generation())

    def _clone_failure(self, code: int, reason: str, text: str) -> str:
        detail = reason or f"exit status {code}"
        hint = ""
        if "Host key verification failed" in text or "HOST IDENTIFICATION HAS CHANGED" in text:
            where = self.cfg.known_hosts_file or str(Path(self.cfg.state_dir) / "known_hosts")
            hint = f"; the server's SSH host key does not match {where}"
        elif "Permission denied" in text:
            hint = "; the SSH key was not accepted by the server (is the deploy key installed?)"
        elif "could not read Username" in text or "terminal prompts disabled" in text:
            hint = "; the server wants credentials (private HTTPS repository without a token?)"
        elif "Remote branch" in text and "not found" in text:
            hint = f"; check branch ({self.branch})"
        return f"cannot clone repo_url {self.url} (branch {self.branch}): {detail}{hint}"

    # ----- commands ------------------------------------------------------------------------------

    def pull(self, run: RunFn, emit: Emit | None = None) -> int:
        """Make the work tree exactly the remote branch. Returns an exit code; never merges.

        ``emit`` (line, stream) receives the agent's own notes (re-clone, errors) for the dashboard.
        """
        with self.emitting(emit):
            if not self.isolated:
                return self._legacy_pull(run)
            try:
                self.ensure(run, thorough=False)
                env = self.git_env()
            except RepoError as exc:
                self.emit(f"error: {exc}", "stderr")
                return 1
            self._clear_stale_locks()
            steps: Sequence[tuple[str, list[str]]] = (
                ("fetch", ["fetch", "--no-tags", "origin", f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}"]),
                ("reset", ["reset", "--hard", f"origin/{self.branch}"]),
                ("clean", ["clean", "-ffdx"]),
            )
            for name, args in steps:
                code = run(["git", "-C", str(self.path), *args], env, self.path)
                if code != 0:
                    if name == "clean":
                        self.emit(f"warning: git clean exited {code}; untracked files may remain "
                                  "(they never enter a flake build)", "stderr")
                        break
                    self.emit(f"error: git {name} failed (exit {code})", "stderr")
                    _log.error("pull_failed", step=name, exit_code=code)
                    return code
            ensure_private_dir(self.path, "repo_dir")
            _log.info("pulled", head=self.generation(), branch=self.branch)
            return 0

    def _clear_stale_locks(self) -> None:
        """Remove lock files a killed git left behind (agent crash, ``stop`` mid-reset).

        The clone is the agent's alone and we hold ``_lock``, so a lock file that is not brand new
        belongs to no live process; leaving it would make every later pull fail.
        """
        git_dir = self.path / ".git"
        now = time.time()
        for lock in [*git_dir.glob("*.lock"), *git_dir.glob("refs/**/*.lock")]:
            try:
                if now - lock.stat().st_mtime > STALE_LOCK_AGE:
                    lock.unlink()
                    _log.warn("stale_lock_removed", path=lock)
            except OSError:
                pass

    def _legacy_pull(self, run: RunFn) -> int:
        try:
            env = self.git_env()
        except RepoError as exc:
            self.emit(f"error: {exc}", "stderr")
            return 1
        self.emit("warning: " + DEPRECATION, "stderr")
        return run(["git", "-C", str(self.path), "pull", "--ff-only"], env, self.path)

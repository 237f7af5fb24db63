"""How far the deployed commit is behind the branch, and how old the deployed ``flake.lock`` is.

Computed from the agent's clone only: the remote-tracking ref ``origin/<branch>`` is exactly what
the agent's last fetch (``pull``, ``pull-switch``, ...) brought in, so no fetch is ever made here.

* ``commits_behind``: commits on ``origin/<branch>`` that the deployed commit does not contain
  (``deployed..origin/<branch>``; after a force-push these are the commits of the new line).
* ``behind_since``: the committer time of the oldest of those commits - since when the branch has
  had commits the host does not run (None when it runs the tip).
* ``lock_last_modified``: the newest ``lastModified`` of all nodes in the *deployed* commit's
  ``flake.lock`` (``nix flake update`` sets it to the time of each input's locked revision).
  Chosen over "the commit time that last changed flake.lock" because it describes what runs,
  not the history: it survives rebases, squashes and shallow clones, and a commit that only
  reformats the lock does not make it look fresh. ``lock_inputs`` has the same per direct input
  of the root node (e.g. ``nixpkgs``), so an alert can name the input that is old.

Idle cost: :meth:`Drift.state` stats three files; ``git`` runs only when the deployed commit or
the remote-tracking ref changed (one ``git log`` for the branch, one ``git show`` per deployed
commit for the lock).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..repo import gitenv

GIT_TIMEOUT = 30.0
MAX_LOCK_BYTES = 8 << 20


@dataclass(frozen=True)
class DriftState:
    deployed_commit: str = ""
    remote_commit: str = ""
    commits_behind: int | None = None
    behind_since: int | None = None  # epoch seconds
    lock_last_modified: int | None = None  # epoch seconds
    lock_inputs: tuple[tuple[str, int], ...] = ()
    detail: str = ""  # why something is unknown


def lock_times(text: str) -> tuple[int | None, tuple[tuple[str, int], ...]]:
    """(newest lastModified of all nodes, lastModified per direct input of the root node)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None, ()
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict):
        return None, ()

    def modified(node: object) -> int | None:
        locked = node.get("locked") if isinstance(node, dict) else None
        value = locked.get("lastModified") if isinstance(locked, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    stamps = [m for m in (modified(n) for n in nodes.values()) if m is not None]
    root = nodes.get(str(data.get("root", "root")))
    inputs = root.get("inputs") if isinstance(root, dict) else None
    direct: list[tuple[str, int]] = []
    if isinstance(inputs, dict):
        for name, target in sorted(inputs.items()):
            # a direct input names its node; a "follows" is a path list and is another input's node
            stamp = modified(nodes.get(target)) if isinstance(target, str) else None
            if stamp is not None:
                direct.append((str(name), stamp))
    return (max(stamps) if stamps else None), tuple(direct)


@dataclass
class Drift:
    repo: Path
    branch: str
    _key: tuple[object, ...] | None = field(default=None, init=False)
    _state: DriftState = field(default_factory=DriftState, init=False)
    _lock_for: tuple[str, tuple[int | None, tuple[tuple[str, int], ...]]] | None = field(default=None, init=False)

    def _fingerprint(self) -> tuple[object, ...]:
        git = self.repo / ".git"
        out: list[object] = []
        for path in (git / "refs/remotes/origin" / self.branch, git / "packed-refs", git / "reftable/tables.list"):
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def state(self, deployed: str) -> DriftState:
        key = (deployed, *self._fingerprint())
        if key != self._key:
            self._state = self._compute(deployed)
            self._key = key
        return self._state

    def _git(self, *args: str) -> gitenv.GitResult:
        env = gitenv.build_env(os.environ, timeout=int(GIT_TIMEOUT), ssh=None, extra={"GIT_OPTIONAL_LOCKS": "0"})
        argv = ["git", "-c", f"safe.directory={self.repo}", "-C", str(self.repo), *args]
        return gitenv.run_captured(argv, env, None, GIT_TIMEOUT)

    def _compute(self, deployed: str) -> DriftState:
        if not (self.repo / ".git").exists():
            return DriftState(deployed, detail="no clone")
        ref = f"refs/remotes/origin/{self.branch}"
        tip = self._git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
        remote = tip.stdout.strip() if tip.ok else ""
        lock_last, inputs = self._lock(deployed)
        if not deployed:
            return DriftState("", remote, None, None, lock_last, inputs,
                              "no switch recorded by this agent yet")
        if not remote:
            return DriftState(deployed, "", None, None, lock_last, inputs, f"{ref} not found (no fetch yet?)")
        log = self._git("log", "--format=%ct", f"{deployed}..{remote}", "--")
        if not log.ok:
            return DriftState(deployed, remote, None, None, lock_last, inputs,
                              f"deployed commit {deployed[:12]} not in the clone ({log.error_text()})")
        stamps = [int(line) for line in log.stdout.split() if line.isdigit()]
        return DriftState(deployed, remote, len(stamps), min(stamps) if stamps else None, lock_last, inputs)

    def _lock(self, deployed: str) -> tuple[int | None, tuple[tuple[str, int], ...]]:
        if not deployed:
            return None, ()
        if self._lock_for is not None and self._lock_for[0] == deployed:
            return self._lock_for[1]
        shown = self._git("show", f"{deployed}:flake.lock")
        value = lock_times(shown.stdout[:MAX_LOCK_BYTES]) if shown.ok else (None, ())
        if shown.ok or "does not exist" in shown.stderr or "exists on disk, but not in" in shown.stderr:
            self._lock_for = (deployed, value)  # a real answer (or no lock in that commit): keep it
        return value

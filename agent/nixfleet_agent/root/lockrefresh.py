"""``force-update`` on NixOS: root refreshes the agent's flake input itself, on a verified commit.

Root builds commits, never a work tree, so a refreshed ``flake.lock`` has to be in a commit. That
commit used to be authored by the agent in its own clone, which is exactly what root must never
build. Now the agent only asks (``update_lock`` in the request, on the published commit it pulled)
and root, after fetching and verifying that commit:

1. checks it out into a throwaway work tree of its own (``work/<id>`` under root's state directory, ``0700``), through a
   private index, so nothing of root's clone changes;
2. runs ``nix flake lock --update-input <agent input>`` there with the negative narinfo cache off
   (the input name comes from root's own command line, the NixOS module, not from the request);
3. when the lock changed, writes a commit of root's own (the verified commit plus that one file)
   to ``refs/heads/nixfleet-lock-refresh`` of root's clone and builds it; otherwise builds the
   verified commit as it is. The work tree is removed either way. Nothing is pushed: publishing a
   lock is ``update``'s job.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from .. import nix
from ..config import AGENT_INPUT_HINT
from ..repo.lockupdate import root_inputs
from .source import LOCK_REF, Refusal, RootClone, Stream, capture


def refresh(clone: RootClone, commit: str, agent_input: str, work: Path, stream: Stream, *, nix_program: str,
            host: str, env: Mapping[str, str]) -> tuple[str, str]:
    """(commit to build, ref it is on): ``commit`` itself when the lock did not change."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    try:
        tree, index = work / "tree", work / "index"
        tree.mkdir(mode=0o700)
        git_env = {**clone.env, "GIT_INDEX_FILE": str(index)}
        for args in (("read-tree", commit), ("checkout-index", "--all", "--force")):
            if stream(["git", "-C", str(clone.path), f"--work-tree={tree}", *args], git_env) != 0:
                raise Refusal("update_lock", f"cannot check out {commit} into root's work tree")
        lock = tree / "flake.lock"
        for name in ("flake.nix", "flake.lock"):
            try:
                mode = (tree / name).lstat().st_mode
            except FileNotFoundError:
                raise Refusal("update_lock", f"commit {commit} has no {name}") from None
            if not stat.S_ISREG(mode):
                raise Refusal("update_lock", f"{name} in commit {commit} is not a regular file")
        before = lock.read_bytes()
        if agent_input not in (root_inputs(before) or []):
            raise Refusal("update_lock", f"flake.lock of {commit} has no input named {agent_input}: {AGENT_INPUT_HINT}")
        argv = nix.flake_update((agent_input,), nix=nix_program, refresh=True)
        code = stream(argv, env, tree)  # nix flake lock acts on the flake in its working directory
        if code != 0:
            raise Refusal("update_lock", f"{' '.join(argv[3:])} failed (exit {code})")
        after = lock.read_bytes() if not lock.is_symlink() else before
        if after == before:
            return commit, clone.branch
        blob = capture(clone.path, git_env, "hash-object", "-w", "--", str(lock))
        if not blob.ok:
            raise Refusal("update_lock", f"cannot store the refreshed flake.lock: {blob.error_text()}")
        steps = capture(clone.path, git_env, "update-index", "--cacheinfo", f"100644,{blob.stdout.strip()},flake.lock")
        tree_id = capture(clone.path, git_env, "write-tree") if steps.ok else steps
        if not tree_id.ok:
            raise Refusal("update_lock", f"cannot write the refreshed tree: {tree_id.error_text()}")
        author = {"GIT_AUTHOR_NAME": "nixfleet-agent-privileged", "GIT_AUTHOR_EMAIL": f"root@{host}",
                  "GIT_COMMITTER_NAME": "nixfleet-agent-privileged", "GIT_COMMITTER_EMAIL": f"root@{host}"}
        message = (f"flake.lock: refresh {agent_input}\n\nforce-update by nixfleet-agent-privileged on {host}, "
                   f"on top of {commit} (not pushed)\n")
        made = capture(clone.path, {**git_env, **author}, "commit-tree", tree_id.stdout.strip(), "-p", commit,
                       "-m", message)
        if not made.ok:
            raise Refusal("update_lock", f"cannot commit the refreshed flake.lock: {made.error_text()}")
        new = made.stdout.strip()
        capture(clone.path, git_env, "update-ref", f"refs/heads/{LOCK_REF}", new)
        return new, LOCK_REF
    finally:
        shutil.rmtree(work, ignore_errors=True)

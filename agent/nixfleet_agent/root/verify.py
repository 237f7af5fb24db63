"""Signed commits (opt in) and no silent downgrade: root's checks on a commit it already fetched.

Reachability (``source``) proves the fleet's remote published a commit; it does not prove who
wrote it, and anyone who can push can publish. With signers configured root also demands that the
target commit carries a signature that verifies against them, the way comin verifies a branch's
head:

- SSH signatures against an allowed-signers file (git's ``gpg.ssh.allowedSignersFile``; the
  signer's principal must match, a good signature by an unlisted key is refused);
- OpenPGP signatures against a file of public keys, imported into a keyring root creates for this
  one check, so only those keys can make a signature good.

The signature's kind is read from the commit itself, so an SSH signature is never judged by the
OpenPGP rule (where "good, trust unknown" is the normal answer) or the other way round.

Signatures alone allow a replay: an attacker with push access but no key can force the branch
back to an older signed commit, perhaps one with a known hole. So with signers configured a target
that is an ancestor of the last commit root deployed is refused too; going back is what the
``rollback`` action is for, and it builds nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..repo import gitenv
from . import source
from .source import Refusal

SSH_HEADER = "-----BEGIN SSH SIGNATURE-----"
PGP_HEADER = "-----BEGIN PGP SIGNATURE-----"


@dataclass(frozen=True)
class Policy:
    allowed_signers: Path | None = None
    openpgp_keys: Path | None = None
    gpg: str = "gpg"
    ssh_keygen: str = "ssh-keygen"

    @property
    def enabled(self) -> bool:
        return self.allowed_signers is not None or self.openpgp_keys is not None


def signature_kind(repo: Path, env: Mapping[str, str], commit: str) -> str:
    """``ssh``, ``openpgp``, ``other`` (e.g. X.509) or ``none``, from the commit's ``gpgsig`` header."""
    raw = source.capture(repo, env, "cat-file", "commit", commit)
    header = raw.stdout.split("\n\n", 1)[0] if raw.ok else ""
    if "\ngpgsig " not in f"\n{header}":
        return "none"
    if f"gpgsig {SSH_HEADER}" in header:
        return "ssh"
    if f"gpgsig {PGP_HEADER}" in header:
        return "openpgp"
    return "other"


def check_signature(repo: Path, env: Mapping[str, str], commit: str, policy: Policy, scratch: Path) -> str:
    """Raise Refusal unless ``commit`` is signed by a configured signer; return who signed it."""
    kind = signature_kind(repo, env, commit)
    if kind == "none":
        raise Refusal("signature", f"commit {commit} is not signed; signed commits are required")
    if kind == "ssh" and policy.allowed_signers is None or kind == "openpgp" and policy.openpgp_keys is None:
        raise Refusal("signature", f"commit {commit} has an {kind} signature, but no {kind} signers are configured")
    if kind == "other":
        raise Refusal("signature", f"commit {commit} has a signature of a kind root does not check (X.509?)")
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="gnupg-", dir=scratch))
    # public keys only: no gpg-agent (nothing to unlock, and its socket is where root does not look)
    (home / "gpg.conf").write_text("no-autostart\n")
    try:
        config = [("gpg.ssh.allowedSignersFile", str(policy.allowed_signers or "/dev/null")),
                  ("gpg.ssh.program", policy.ssh_keygen), ("gpg.program", policy.gpg),
                  ("gpg.minTrustLevel", "undefined")]
        check_env = {**_with_config(env, config), "GNUPGHOME": str(home)}
        if kind == "openpgp":
            imported = gitenv.run_captured(
                [policy.gpg, "--batch", "--quiet", "--no-tty", "--no-autostart", "--import",
                 str(policy.openpgp_keys)], check_env, None, 60)
            if not imported.ok:
                raise Refusal("signature", f"cannot read the OpenPGP keys in {policy.openpgp_keys}: "
                                           f"{imported.error_text()}")
        verdict = source.capture(repo, check_env, "show", "-s", "--format=%G?%n%GS%n%GK", commit)
        verified = source.capture(repo, check_env, "verify-commit", commit)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    status, signer, key = (verdict.stdout.split("\n") + ["", "", ""])[:3]
    # SSH: "G" only (a good signature whose key matches no allowed principal is "U").
    # OpenPGP: the keyring holds only the configured keys, so "good, trust unknown" (U) is theirs.
    good = ("G",) if kind == "ssh" else ("G", "U")
    if not verified.ok or status not in good:
        why = {"B": "bad signature", "U": "signed by a key that is not an allowed signer", "E": "signer unknown",
               "X": "signature expired", "Y": "key expired", "R": "key revoked", "N": "no signature"}
        raise Refusal("signature", f"commit {commit} does not verify against the configured {kind} signers "
                                   f"({why.get(status, status or 'unverifiable')}{', key ' + key if key else ''})")
    return signer or key


def _with_config(env: Mapping[str, str], config: list[tuple[str, str]]) -> dict[str, str]:
    out = dict(env)
    count = int(out.get("GIT_CONFIG_COUNT", "0"))
    for key, value in config:
        out[f"GIT_CONFIG_KEY_{count}"], out[f"GIT_CONFIG_VALUE_{count}"] = key, value
        count += 1
    out["GIT_CONFIG_COUNT"] = str(count)
    return out


class Deployed:
    """The last commit root switched to (or made the boot default), in root's own state."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def commit(self) -> str:
        """The last deployed commit; "" only when nothing was deployed yet. A record that exists but
        cannot be used is a refusal, not "": an empty answer would silently switch the
        not-backwards rule off (root's own file, so this means disk damage or tampering)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise source.Refusal("backwards", f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            doc = json.loads(raw.decode("utf-8"))
        except ValueError:
            doc = None
        value = doc.get("commit") if isinstance(doc, dict) else None
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{40}", value):
            raise source.Refusal("backwards", f"{self.path} is unreadable or damaged, so root cannot tell "
                                 "whether this commit is older than the deployed one; remove it to accept "
                                 "the next signed commit as the new baseline")
        return value

    def record(self, commit: str, built: str, action: str, when: str) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"commit": commit, "built": built, "action": action, "at": when}, handle)
        os.replace(tmp, self.path)


def check_not_backwards(src: source.RootClone | source.LegacySource, commit: str, deployed: str) -> None:
    """Refuse a target older than the last deployed commit: its ancestor, or (after a force-push
    onto another line of history) one committed before it. Committer times of signed commits are
    covered by the signature, so someone without a key cannot make an old commit look new; a newer
    signed commit on a rewritten history is an admin's force-push and is accepted."""
    if not deployed or commit == deployed:
        return
    if src.is_ancestor(commit, deployed):
        raise Refusal("backwards", f"commit {commit} is older than {deployed}, the last commit root deployed; "
                                   "the branch moved backwards (use rollback to go back)")
    if src.is_ancestor(deployed, commit):
        return
    times = source.capture(src.path, src.env, "show", "-s", "--format=%ct", commit, deployed, "--")
    stamps = [int(t) for t in times.stdout.split()] if times.ok else []
    if len(stamps) != 2 or stamps[0] < stamps[1]:
        raise Refusal("backwards", f"commit {commit} is on another line of history than {deployed}, the last "
                                   "commit root deployed, and was committed before it; the branch moved "
                                   "backwards (use rollback to go back)")

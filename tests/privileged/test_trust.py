"""Which commits root builds: only what the fleet published, as root fetched it itself, and with
signers configured only what they signed, never a step back behind what root deployed.

Real git throughout: the fleet's remote is a repository root fetches from, the agent's clone is a
real clone of it (a commit authored there is one the remote never saw), and the signing keys are
made here with ssh-keygen and gpg.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nixfleet_agent.config import AGENT_INPUT_HINT
from root_support import ID, Host, commit, git


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("SHIM_CALLS", "")
    return Host(tmp_path)


def refusal(host: Host, request_id: str = ID) -> str:
    result = host.result(request_id)
    assert result["exit_code"] == 2, result
    return str(result["error"])


# ---------------------------------------------------------------------------- published


def test_a_commit_only_the_agents_clone_has_is_refused(host: Host) -> None:
    """Issue 11's reproduction: a commit on no remote branch adding a root SSH key, named in a
    well-formed request. Root used to build it; now it never leaves the agent's clone."""
    evil = commit(host.agent_clone, {"root-key.nix": "{ users.users.root.openssh.authorizedKeys.keys = [ \"x\" ]; }\n"},
                  "let me in")
    host.write(host.good(commit=evil))
    assert host.run() == 1
    error = refusal(host)
    assert error.startswith(f"published: commit {evil} is not in main of {host.origin} as root fetched it"), error
    assert host.builds() == []
    assert subprocess.run(["git", "-C", str(host.clone), "cat-file", "-e", evil], capture_output=True).returncode != 0


def test_a_commit_force_pushed_away_is_refused_and_the_new_head_accepted(host: Host) -> None:
    mistake = commit(host.origin, {"bad.nix": "{ }\n"}, "mistake")
    host.write(host.good(id="first", commit=mistake))
    assert host.run() == 0  # published at the time: built
    git(host.origin, "reset", "-q", "--hard", "HEAD~1")
    fixed = commit(host.origin, {"good.nix": "{ }\n"}, "fix")
    host.write(host.good(id="second", commit=mistake))
    assert host.run() == 1
    assert refusal(host, "second").startswith(f"published: commit {mistake} is no longer on (force-pushed away "
                                              f"from) main of {host.origin}")
    host.write(host.good(id="third", commit=fixed))
    assert host.run() == 0
    assert host.builds() == [f"switch --flake {host.flake(mistake)}", f"switch --flake {host.flake(fixed)}"]


def test_an_older_published_commit_is_still_published(host: Host) -> None:
    """Without signers, the branch's history is what the fleet published (a rollback to it via a
    normal push is the admins' decision)."""
    newer = commit(host.origin, {"x.nix": "{ }\n"}, "newer")
    host.write(host.good(id="a", commit=newer))
    assert host.run() == 0
    host.write(host.good(id="b", commit=host.commit))
    assert host.run() == 0


def test_a_remote_root_cannot_fetch_is_a_refusal_not_a_build(host: Host) -> None:
    shutil.rmtree(host.origin)
    host.write(host.good())
    assert host.run() == 1
    assert refusal(host).startswith(f"fetch: cannot fetch main from {host.origin}; root builds only what it fetched")
    assert host.builds() == []


def test_roots_clone_follows_its_own_branch_not_the_agents(host: Host) -> None:
    """Nothing the agent does to its clone (rewriting refs, changing its origin) reaches root."""
    other = host.tmp / "other-remote"
    subprocess.run(["git", "clone", "-q", str(host.origin), str(other)], check=True)
    evil = commit(other, {"evil.nix": "{ }\n"}, "from elsewhere")
    git(host.agent_clone, "remote", "set-url", "origin", str(other))
    git(host.agent_clone, "fetch", "-q", "origin")
    git(host.agent_clone, "update-ref", "refs/remotes/origin/main", evil)
    host.write(host.good(commit=evil))
    assert host.run() == 1
    assert refusal(host).startswith(f"published: commit {evil} is not in main of {host.origin}")


# ---------------------------------------------------------------------------- signatures


class Signers:
    """Keys made for the test: an allowed one, one nobody listed, and the allowed-signers file."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "keys"
        self.dir.mkdir()
        for name in ("admin", "intruder"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.dir / name)],
                           check=True)
        self.allowed = self.dir / "allowed_signers"
        self.allowed.write_text(f"admin@example.test {(self.dir / 'admin.pub').read_text()}")

    def flags(self, name: str) -> tuple[str, ...]:
        return ("-c", "gpg.format=ssh", "-c", f"user.signingkey={self.dir / name}", "-c", "commit.gpgSign=true")


@pytest.fixture
def signers(tmp_path: Path) -> Signers:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (apt install openssh-client)")
    return Signers(tmp_path)


def test_unsigned_and_wrongly_signed_commits_are_refused_a_correctly_signed_one_accepted(
        host: Host, signers: Signers) -> None:
    host.extra = ["--allowed-signers", str(signers.allowed)]
    unsigned = commit(host.origin, {"a.nix": "{ }\n"}, "unsigned")
    host.write(host.good(id="unsigned", commit=unsigned))
    assert host.run() == 1
    assert refusal(host, "unsigned") == f"signature: commit {unsigned} is not signed; signed commits are required"

    wrong = commit(host.origin, {"b.nix": "{ }\n"}, "signed by a key nobody allowed", *signers.flags("intruder"))
    host.write(host.good(id="wrong", commit=wrong))
    assert host.run() == 1
    error = refusal(host, "wrong")
    assert error.startswith(f"signature: commit {wrong} does not verify against the configured ssh signers "
                            "(signed by a key that is not an allowed signer"), error

    good = commit(host.origin, {"c.nix": "{ }\n"}, "signed by the admin", *signers.flags("admin"))
    host.write(host.good(id="good", commit=good))
    assert host.run() == 0, host.log("good")
    assert f"{good} is signed by admin@example.test" in host.log("good")
    assert host.builds() == [f"switch --flake {host.flake(good)}"]


def test_a_tampered_signed_commit_does_not_verify(host: Host, signers: Signers) -> None:
    """A commit object whose content was changed after signing (same signature, other tree)."""
    host.extra = ["--allowed-signers", str(signers.allowed)]
    signed = commit(host.origin, {"a.nix": "{ }\n"}, "signed", *signers.flags("admin"))
    raw = subprocess.run(["git", "-C", str(host.origin), "cat-file", "commit", signed], capture_output=True,
                         check=True).stdout.replace(b"signed\n", b"signed, then changed\n")
    forged = subprocess.run(["git", "-C", str(host.origin), "hash-object", "-t", "commit", "-w", "--stdin"],
                            input=raw, capture_output=True, check=True).stdout.decode().strip()
    git(host.origin, "update-ref", "refs/heads/main", forged)
    host.write(host.good(commit=forged))
    assert host.run() == 1
    assert "(bad signature" in refusal(host)


def test_with_signers_the_branch_may_not_move_back_behind_what_root_deployed(host: Host, signers: Signers) -> None:
    """A replay: someone who can push but cannot sign forces the branch back to an older signed
    commit. Root refuses; the rollback action (which builds nothing) is how to go back."""
    host.extra = ["--allowed-signers", str(signers.allowed)]
    old = commit(host.origin, {"a.nix": "{ }\n"}, "old", *signers.flags("admin"))
    new = commit(host.origin, {"b.nix": "{ }\n"}, "new", *signers.flags("admin"))
    host.write(host.good(id="new", commit=new))
    assert host.run() == 0
    git(host.origin, "reset", "-q", "--hard", old)  # force-push back
    host.write(host.good(id="old", commit=old))
    assert host.run() == 1
    assert refusal(host, "old") == (f"backwards: commit {old} is older than {new}, the last commit root deployed; "
                                    "the branch moved backwards (use rollback to go back)")
    host.write({"id": "back", "action": "rollback"})
    assert host.run() == 0
    assert host.builds()[-1] == "switch --rollback"
    host.write(host.good(id="again", commit=new))
    assert host.run() == 1  # new is no longer on the branch
    assert refusal(host, "again").startswith("published:")


def test_with_signers_an_older_commit_of_another_history_is_refused_a_newer_one_accepted(
        host: Host, signers: Signers) -> None:
    """A replay need not be an ancestor: a signed commit of a line of history that a force-push
    replaced is older (by its signed committer time) than what root deployed: refused. An admin's
    newer signed commit on a rewritten history is accepted."""
    host.extra = ["--allowed-signers", str(signers.allowed)]
    base = git(host.origin, "rev-parse", "HEAD")
    replaced = commit(host.origin, {"old.nix": "{ hole = true; }\n"}, "since replaced", *signers.flags("admin"),
                      when=1_800_000_000)
    git(host.origin, "reset", "-q", "--hard", base)
    deployed = commit(host.origin, {"new.nix": "{ }\n"}, "current", *signers.flags("admin"), when=1_800_000_100)
    host.write(host.good(id="current", commit=deployed))
    assert host.run() == 0
    git(host.origin, "update-ref", "refs/heads/main", replaced)  # force-push to the replaced line
    host.write(host.good(id="replay", commit=replaced))
    assert host.run() == 1
    assert refusal(host, "replay").startswith(f"backwards: commit {replaced} is on another line of history than "
                                              f"{deployed}, the last commit root deployed, and was committed before it")
    git(host.origin, "reset", "-q", "--hard", base)
    rewritten = commit(host.origin, {"fix.nix": "{ }\n"}, "rewritten by an admin", *signers.flags("admin"),
                       when=1_800_000_200)
    host.write(host.good(id="rewritten", commit=rewritten))
    assert host.run() == 0, host.log("rewritten")


def test_openpgp_signatures_against_the_configured_keys(host: Host, signers: Signers, tmp_path: Path) -> None:
    if shutil.which("gpg") is None:
        pytest.skip("gpg is not installed (apt install gnupg)")
    home = tmp_path / "signer-gnupg"
    home.mkdir(mode=0o700)
    gpg_env = {"GNUPGHOME": str(home)}
    for uid in ("Admin <admin@example.test>", "Other <other@example.test>"):
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                       env={**os.environ, **gpg_env}, check=True, capture_output=True)
    keys = tmp_path / "fleet-keys.asc"
    keys.write_bytes(subprocess.run(["gpg", "--armor", "--export", "admin@example.test"], env={**os.environ, **gpg_env},
                                    check=True, capture_output=True).stdout)
    host.extra = ["--openpgp-keys", str(keys)]
    os.environ["GNUPGHOME"] = str(home)  # the signer's keyring, for git commit -S
    try:
        good = commit(host.origin, {"b.nix": "{ }\n"}, "pgp admin", "-c", "user.signingkey=admin@example.test",
                      "-c", "commit.gpgSign=true")
        other = commit(host.origin, {"c.nix": "{ }\n"}, "pgp other", "-c", "user.signingkey=other@example.test",
                       "-c", "commit.gpgSign=true")
    finally:
        # the gpg-agent that signing started must not outlive the test
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=dict(os.environ), capture_output=True, check=False)
        del os.environ["GNUPGHOME"]
    ssh_signed = commit(host.origin, {"d.nix": "{ }\n"}, "ssh", *signers.flags("admin"))
    host.write(host.good(id="other", commit=other))
    assert host.run() == 1
    assert "does not verify against the configured openpgp signers" in refusal(host, "other")
    host.write(host.good(id="ssh", commit=ssh_signed))  # an SSH signature is not judged by the OpenPGP rule
    assert host.run() == 1
    assert refusal(host, "ssh") == (f"signature: commit {ssh_signed} has an ssh signature, but no ssh signers are "
                                    "configured")
    host.write(host.good(id="good", commit=good))
    assert host.run() == 0, host.log("good")  # on the branch (not its head) and signed by a configured key
    assert host.builds() == [f"switch --flake {host.flake(good)}"]


# ---------------------------------------------------------------------------- force-update


def test_update_lock_builds_roots_own_commit_of_the_refreshed_lock(host: Host) -> None:
    host.write(host.good(update_lock=True, refresh=True))
    assert host.run(lock_rev="1" * 40) == 0, host.log()
    (nix_call,) = [c for c in host.shim_calls() if c.startswith("nix ")]
    assert nix_call.endswith("flake lock --update-input nixfleet-agent --option narinfo-cache-negative-ttl 0")
    (build,) = host.builds()
    built = build.split("rev=")[1].split("#")[0]
    assert build == (f"switch --flake {host.flake(built, ref='nixfleet-lock-refresh')} "
                     "--option narinfo-cache-negative-ttl 0")
    assert git(host.clone, "rev-parse", f"{built}~1") == host.commit
    assert git(host.clone, "diff", "--name-only", host.commit, built) == "flake.lock"
    lock = json.loads(git(host.clone, "show", f"{built}:flake.lock"))
    assert lock["nodes"]["nixfleet-agent"]["locked"]["rev"] == "1" * 40
    assert git(host.origin, "rev-parse", "HEAD") == host.commit  # nothing published
    assert not (host.root_dir / "work" / ID).exists()


def test_update_lock_with_nothing_new_builds_the_verified_commit(host: Host) -> None:
    host.write(host.good(update_lock=True))
    assert host.run() == 0
    assert host.builds() == [f"switch --flake {host.flake(host.commit)}"]


def test_update_lock_needs_a_published_commit_and_the_agents_input(host: Host) -> None:
    evil = commit(host.agent_clone, {"flake.lock": "{}\n"}, "agent's lock")
    host.write(host.good(id="evil", commit=evil, update_lock=True))
    assert host.run() == 1
    assert refusal(host, "evil").startswith("published:")
    host.extra = ["--agent-input", "agent"]
    host.write(host.good(id="noinput", update_lock=True))
    assert host.run() == 1
    assert refusal(host, "noinput") == (f"update_lock: flake.lock of {host.commit} has no input named agent: "
                                        f"{AGENT_INPUT_HINT}")
    assert host.builds() == []


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_update_lock_must_be_a_boolean_and_for_builds_only(host: Host, value: object) -> None:
    host.write(host.good(update_lock=value))
    assert host.run() == 2
    assert str(host.result()["error"]).startswith("update_lock: must be true or false")
    host.write({"id": "rb", "action": "rollback", "update_lock": True})
    assert host.run() == 2
    assert host.result("rb")["error"] == "update_lock: only for switch (got action rollback)"


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"commit": 5}', b'{"commit": "abc"}', b"\xff\xfe"])
def test_a_damaged_deployed_record_refuses_instead_of_switching_the_rule_off(host: Host, signers: Signers,
                                                                             damage: bytes) -> None:
    """Before: an unreadable deployed.json read as "nothing deployed yet", so an older signed commit
    replayed after it was damaged was built."""
    host.extra = ["--allowed-signers", str(signers.allowed)]
    old = commit(host.origin, {"a.nix": "{ }\n"}, "old", *signers.flags("admin"))
    new = commit(host.origin, {"b.nix": "{ }\n"}, "new", *signers.flags("admin"))
    host.write(host.good(id="new", commit=new))
    assert host.run() == 0
    deployed = host.root_dir / "deployed.json"
    assert deployed.is_file()
    deployed.write_bytes(damage)
    git(host.origin, "reset", "-q", "--hard", old)
    host.write(host.good(id="old", commit=old))
    assert host.run() == 1
    assert refusal(host, "old").startswith(f"backwards: {deployed} is unreadable or damaged")
    assert host.builds() == [f"switch --flake {host.flake(new)}"]

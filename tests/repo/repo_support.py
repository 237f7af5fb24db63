"""Helpers for the repository tests: bare git remotes on disk, a flake with a local git input,
a Config builder, a collecting RunFn. (Named uniquely: tests/ has more than one conftest.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

from nixfleet_agent.config import Config
from nixfleet_agent.secret import Secret

NIX = shutil.which("nix")
NIX_FLAGS = ["--extra-experimental-features", "nix-command flakes"]
IDENTITY = ["-c", "user.name=Fleet Admin", "-c", "user.email=admin@example.org", "-c", "init.defaultBranch=main"]


def sh_git(*args: str, cwd: Path | None = None, check: bool = True, env: Mapping[str, str] | None = None) -> str:
    """Plain git as a user would run it (the test's own setup, not the agent)."""
    proc = subprocess.run(
        ["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, env=dict(env) if env else None, timeout=60
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


class Remote:
    """A bare repository (the fleet repo) and a separate work tree the 'admin' pushes from."""

    def __init__(self, root: Path, name: str = "fleet", files: dict[str, str] | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-admin"
        sh_git("init", "-q", "--bare", "-b", "main", str(self.bare))
        sh_git("init", "-q", "-b", "main", str(self.work))
        sh_git("remote", "add", "origin", str(self.bare), cwd=self.work)
        self.commit(files or {"flake.nix": "{ outputs = _: { }; }\n", "README": "fleet\n"}, "initial")

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str], message: str, branch: str = "main") -> str:
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if name.endswith(".sh") or "/hooks/" in name or name.startswith(".githooks/"):
                path.chmod(0o755)
        sh_git("add", "-A", cwd=self.work)
        sh_git("commit", "-q", "-m", message, cwd=self.work)
        sh_git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return sh_git("rev-parse", "HEAD", cwd=self.work)

    def sync(self, branch: str = "main") -> None:
        sh_git("fetch", "-q", "origin", cwd=self.work)
        sh_git("reset", "-q", "--hard", f"origin/{branch}", cwd=self.work)

    def force_new_history(self, files: dict[str, str]) -> str:
        """Rewrite the branch with an unrelated history (as after an admin's force-push)."""
        sh_git("checkout", "-q", "--orphan", "rewritten", cwd=self.work)
        sh_git("rm", "-rfq", ".", cwd=self.work)
        for name, text in files.items():
            (self.work / name).write_text(text)
        sh_git("add", "-A", cwd=self.work)
        sh_git("commit", "-q", "-m", "rewritten history", cwd=self.work)
        sh_git("push", "-q", "--force", "origin", "HEAD:refs/heads/main", cwd=self.work)
        sh_git("checkout", "-q", "-B", "main", cwd=self.work)
        return sh_git("rev-parse", "HEAD", cwd=self.work)

    def head(self, branch: str = "main") -> str:
        return sh_git("--git-dir", str(self.bare), "rev-parse", f"refs/heads/{branch}")

    def log(self, fmt: str = "%H %s", branch: str = "main") -> list[str]:
        return sh_git("--git-dir", str(self.bare), "log", f"--format={fmt}", f"refs/heads/{branch}").splitlines()

    def show(self, path: str, branch: str = "main") -> str:
        return sh_git("--git-dir", str(self.bare), "show", f"refs/heads/{branch}:{path}")


class FlakeRemote(Remote):
    """A fleet flake whose inputs (``dep``, and any others named) are local git repositories, so nix
    works offline."""

    def __init__(self, root: Path, name: str = "fleet", inputs: tuple[str, ...] = ("dep",)) -> None:
        self.inputs = {input_name: root / f"{name}-{input_name}" for input_name in inputs}
        self.dep = self.inputs["dep"]
        for input_name, path in self.inputs.items():
            sh_git("init", "-q", "-b", "main", str(path))
            self.bump_dep("initial", input_name)
        flake = (
            "{\n"
            + "".join(f'  inputs.{n}.url = "git+file://{p}";\n' for n, p in self.inputs.items())
            + f"  outputs = {{ self, {', '.join(self.inputs)} }}: {{ }};\n"
            "}\n"
        )
        super().__init__(root, name, {"flake.nix": flake})
        nix_in(self.work, "flake", "update")
        sh_git("add", "flake.lock", cwd=self.work)
        sh_git("commit", "-q", "-m", "lock", cwd=self.work)
        sh_git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=self.work)

    def bump_dep(self, message: str, input_name: str = "dep") -> str:
        """A new upstream revision of an input, so ``nix flake update`` has something to do."""
        path = self.inputs[input_name]
        (path / "flake.nix").write_text(f"# {message}\n{{ outputs = _: {{ }}; }}\n")
        sh_git("add", "-A", cwd=path)
        sh_git("commit", "-q", "-m", message, cwd=path)
        return sh_git("rev-parse", "HEAD", cwd=path)


def nix_in(cwd: Path, *args: str) -> None:
    proc = subprocess.run([NIX or "nix", *NIX_FLAGS, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"nix {' '.join(args)} failed: {proc.stderr}")


class Collect:
    """A RunFn like the command runner's: runs the child, keeps every line, returns the exit code."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.lines: list[tuple[str, str]] = []
        self.envs: list[dict[str, str]] = []

    def __call__(self, argv: Sequence[str], env: Mapping[str, str] | None, cwd: Path | None) -> int:
        self.calls.append(list(argv))
        self.envs.append(dict(env or {}))
        proc = subprocess.run(
            list(argv), env=dict(env) if env is not None else None, cwd=cwd, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=180,
        )
        self.lines += [(line, "stdout") for line in proc.stdout.splitlines()]
        self.lines += [(line, "stderr") for line in proc.stderr.splitlines()]
        return proc.returncode

    def text(self) -> str:
        return "\n".join(line for line, _ in self.lines)


class Emitted:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, line: str, stream: str) -> None:
        self.lines.append((line, stream))

    def text(self) -> str:
        return "\n".join(line for line, _ in self.lines)


def make_cfg(tmp: Path, **overrides: Any) -> Config:
    state = Path(overrides.pop("state_dir", tmp / "state"))
    values: dict[str, Any] = dict(
        url="ws://127.0.0.1:9/ws",
        token=Secret("test-token"),
        hostname="testhost",
        state_dir=state,
        repo_dir=overrides.pop("repo_dir", state / "repo"),
        git_timeout=30,
        update_attempts=5,
    )
    values.update(overrides)
    return Config(**values)

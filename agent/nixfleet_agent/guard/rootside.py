"""The root program's guard-rails around the one ``nixos-rebuild`` of a build request.

``RootGuard.check_space`` runs before root fetches, ``RootGuard.rebuild`` replaces the plain
``nixos-rebuild <action>`` call of ``root/main.py``:

1. **pre-flight** (``check_space``, called before root fetches; ``[preflight]`` of the trusted
   ``--config``): too little free space on ``/boot``, the ESP or the store's filesystem refuses the
   request (rule ``preflight``, exit code 2) before anything is fetched, built or written;
2. **switch inhibitors** (NixOS ``switch``): root builds the toplevel first (``nix build --no-link
   --json``; ``nixos-rebuild`` then finds it built) and compares its ``switch-inhibitors`` with the
   running system's; on a change it runs ``nixos-rebuild boot`` instead and says so in the log and
   in ``result.json`` (``activation: "boot"``, ``notes``), which the agent shows in the final status;
3. **retention** (``[retention]``, after a successful switch only, once its health checks passed, so
   the generation a rollback needs is still there): ``nix-env --delete-generations
   +N`` on the system profile, then ``switch-to-configuration boot`` of the profile to rewrite the
   boot entries, then ``nix-store --gc``. A failure there does not undo the switch: it becomes a
   note, and the result stays a success.

Everything it decides comes from root's own configuration and the store, never from the request.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .. import log
from .. import nix as cmdline
from ..root.source import Refusal
from . import inhibitors, preflight, settings

_log = log.get("privileged")
Run = Callable[[list[str], BinaryIO], tuple[int, str]]


@dataclass
class RootGuard:
    guard: settings.Guard = field(default_factory=settings.Guard)
    darwin: bool = False
    nix: str = "nix"
    nix_env: str = "nix-env"
    nix_store: str = "nix-store"
    current_system: Path = preflight.CURRENT_SYSTEM
    system_profile: str = cmdline.SYSTEM_PROFILE
    mounts: Path = preflight.MOUNTS
    # what this request's result.json says beyond the exit code (one request per process)
    fields: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def result_fields(self) -> dict[str, object]:
        return {**self.fields, **({"notes": list(self.notes)} if self.notes else {})}

    def _note(self, out: BinaryIO, text: str) -> None:
        out.write(f"nixfleet-agent-privileged: {text}\n".encode())
        self.notes.append(text)

    def check_space(self, out: BinaryIO) -> None:
        """Pre-flight, first thing for a build request: a full disk is refused with its numbers
        before root fetches (which would fail on it with a less telling error) or builds."""
        if not self.guard.preflight.enable:
            return
        needs = preflight.needs(self.guard.preflight, current_system=self.current_system, mounts=self.mounts)
        short = [need for need in needs if need.short]
        if short:
            raise Refusal("preflight", preflight.refusal(short))
        out.write(("nixfleet-agent-privileged: pre-flight: " + preflight.summary(needs) + "\n").encode())

    def rebuild(self, program: str, action: str, flake: str, refresh: bool, out: BinaryIO, run: Run,
                env: Mapping[str, str]) -> tuple[int, str]:
        if action == "switch" and not self.darwin and self.guard.preflight.switch_inhibitors:
            built = self._toplevel(flake, refresh, out, env)
            if isinstance(built, tuple):
                return built
            changes = inhibitors.changed(self.current_system, built)
            if changes:
                action = "boot"
                self.fields.update(activation="boot", inhibitors=changes)
                self._note(out, f"switch inhibited ({'; '.join(changes)}): ran nixos-rebuild boot instead; "
                                "the new configuration is the boot default and takes effect at the next reboot")
                _log.warn("switch-inhibited", toplevel=str(built), changes="; ".join(changes))
        return run(cmdline.rebuild([program], action, flake, refresh=refresh), out)

    def after_success(self, out: BinaryIO, run: Run) -> None:
        """Retention, once the switch stands: after the health verdict, never between the rebuild
        and it (with ``keep_generations = 1`` the generation a rollback goes back to would be
        deleted, and collected by the garbage collection, before the checks had decided)."""
        if not self.darwin and self.guard.retention.enabled:
            self._retain(out, run)

    def _toplevel(self, flake: str, refresh: bool, out: BinaryIO, env: Mapping[str, str]) -> Path | tuple[int, str]:
        """The new system's store path, built but not activated; (exit code, error) when the build failed."""
        argv = cmdline.nixos_toplevel_build(flake, nix=self.nix, refresh=refresh)
        out.write(f"nixfleet-agent-privileged: running {' '.join(argv)} (to compare switch inhibitors)\n".encode())
        out.flush()
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out,
                                  env=dict(env), cwd="/", start_new_session=True, check=False)
        except OSError as exc:
            message = f"cannot start {argv[0]}: {exc.strerror or exc}"
            out.write(f"nixfleet-agent-privileged: {message}\n".encode())
            return 127, message
        if proc.returncode != 0:
            return proc.returncode, f"building the system failed (nix build, exit {proc.returncode})"
        try:
            doc = json.loads(proc.stdout)
            path = Path(doc[0]["outputs"]["out"])
        except (ValueError, LookupError, TypeError):
            return 1, f"nix build printed no toplevel path: {proc.stdout[:200]!r}"
        out.write(f"nixfleet-agent-privileged: built {path}\n".encode())
        return path

    def _retain(self, out: BinaryIO, run: Run) -> None:
        keep = self.guard.retention.keep_generations
        if keep is not None:
            code, _ = run(cmdline.delete_generations(keep, profile=self.system_profile, nix_env=self.nix_env), out)
            if code == 0:
                code, _ = run(cmdline.install_boot_entries(self.system_profile), out)
                if code != 0:
                    self._note(out, f"retention: rewriting the boot entries failed (exit {code}); old entries may remain")
            else:
                self._note(out, f"retention: deleting system generations beyond the last {keep} failed (exit {code})")
        if self.guard.retention.gc:
            code, _ = run(cmdline.collect_garbage(nix_store=self.nix_store), out)
            if code != 0:
                self._note(out, f"retention: garbage collection failed (exit {code})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--nix-env", default="nix-env", help="nix-env executable (generation retention, health rollback)")
    add("--nix-store", default="nix-store", help="nix-store executable (garbage collection)")
    add("--current-system", type=Path, default=preflight.CURRENT_SYSTEM,
        help="the running system (kernel/initrd sizes, switch inhibitors)")
    add("--system-profile", default=cmdline.SYSTEM_PROFILE, help="the system profile (generations kept, health rollback)")


def load(args: argparse.Namespace, darwin: bool) -> RootGuard | str:
    """Root's guard settings from its trusted ``--config`` (already checked to be root's by main);
    an error text when a value there is bad."""
    doc: dict[str, object] = {}
    if args.config is not None:
        try:
            with open(args.config, "rb") as handle:
                doc = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            return f"cannot read {args.config}: {getattr(exc, 'strerror', None) or exc}"
    problems: list[str] = []
    guard = settings.parse(doc, str(args.config), problems)
    if problems:
        return "; ".join(problems)
    return RootGuard(guard=guard, darwin=darwin, nix=args.nix, nix_env=args.nix_env, nix_store=args.nix_store,
                     current_system=args.current_system, system_profile=args.system_profile)

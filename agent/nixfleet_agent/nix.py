"""Every ``nix`` and ``*-rebuild`` command line the agent and its root side run, built here once.

Why one module: the same rule (which experimental features, how the negative narinfo cache is
bypassed, how a flake reference names exactly one commit) used to be spelled in four places, and a
fix in one of them did not reach the others. Callers add only their program path (``nixos-rebuild``
may be the NixOS module's store path) and run the argv; nothing here starts a process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

NIX_FLAGS = ("--extra-experimental-features", "nix-command flakes")
NIX = ("nix", *NIX_FLAGS)
# force-update/force-rebuild: a substitute that was missing a minute ago may be there now
NO_NEGATIVE_CACHE = ("--option", "narinfo-cache-negative-ttl", "0")


def flake_update(inputs: Sequence[str] = (), *, nix: str = "nix", refresh: bool = False) -> list[str]:
    """All inputs, or only the named ones. ``nix flake lock --update-input`` is the form every Nix
    from 2.4 on accepts (newer ones also spell it ``nix flake update <input>``)."""
    extra = list(NO_NEGATIVE_CACHE) if refresh else []
    if not inputs:
        return [nix, *NIX_FLAGS, "flake", "update", *extra]
    argv = [nix, *NIX_FLAGS, "flake", "lock"]
    for name in inputs:
        argv += ["--update-input", name]
    return [*argv, *extra]


def dry_build(installable: str, *, nix: str = "nix") -> list[str]:
    """What ``installable`` would build, as JSON: the system-freshness check compares its output path."""
    return [nix, "build", *NIX_FLAGS, "--dry-run", "--json", installable]


def git_flake(repo: Path | str, rev: str, attr: str, ref: str = "") -> str:
    """Exactly commit ``rev`` of ``repo`` (never its work tree), output ``attr``. ``ref`` names the
    branch ``rev`` is on: Nix's git fetcher looks for the commit on that ref (default: HEAD's)."""
    query = f"ref={ref}&rev={rev}" if ref else f"rev={rev}"
    return f"git+file://{repo}?{query}#{attr}"


def rebuild(program: Sequence[str], action: str, flake: str, *, refresh: bool = False) -> list[str]:
    """``nixos-rebuild``/``darwin-rebuild``/``home-manager`` ``<action> --flake <flake>``.

    ``program`` is the program with any prefix (``sudo -n``) the caller decided on."""
    return [*program, action, "--flake", flake, *(NO_NEGATIVE_CACHE if refresh else ())]


def rollback(program: Sequence[str]) -> list[str]:
    """Back to the previous system generation (NixOS, nix-darwin)."""
    return [*program, "switch", "--rollback"]


def reboot(*, darwin: bool, systemctl: str = "systemctl", shutdown: str = "/sbin/shutdown") -> list[str]:
    """Reboot the host now: ``systemctl reboot`` on NixOS, ``shutdown -r now`` on macOS (run as root)."""
    return [shutdown, "-r", "now"] if darwin else [systemctl, "reboot"]


# ----- guard-rails (guard/): the system toplevel, generation retention, garbage collection ----------

SYSTEM_PROFILE = "/nix/var/nix/profiles/system"


def nixos_toplevel_build(flake: str, *, nix: str = "nix", refresh: bool = False) -> list[str]:
    """Build the system ``flake`` (``<ref>#<host>``, as nixos-rebuild takes it) without activating it;
    ``--json`` prints the toplevel's store path (read to compare its switch inhibitors)."""
    ref, _, attr = flake.partition("#")
    installable = f'{ref}#nixosConfigurations."{attr}".config.system.build.toplevel'
    return [nix, *NIX_FLAGS, "build", "--no-link", "--json", installable, *(NO_NEGATIVE_CACHE if refresh else ())]


def delete_generations(keep: int, *, profile: str = SYSTEM_PROFILE, nix_env: str = "nix-env") -> list[str]:
    """Keep the last ``keep`` generations of ``profile`` (and any newer than the current one)."""
    return [nix_env, "--profile", profile, "--delete-generations", f"+{keep}"]


def install_boot_entries(profile: str = SYSTEM_PROFILE) -> list[str]:
    """Rewrite the boot loader's entries from the generations that are left (what nixos-rebuild boot does)."""
    return [f"{profile}/bin/switch-to-configuration", "boot"]


def collect_garbage(*, nix_store: str = "nix-store") -> list[str]:
    """Delete every store path no root (profile generation, result link, running process) keeps."""
    return [nix_store, "--gc"]


# ----- health gate (health/): going back to the previous generation ----------------------------------

def set_profile(profile: Path | str, generation: str, *, nix_env: str = "nix-env") -> list[str]:
    """Point ``profile`` at ``generation`` (a store path) as a new profile generation: how
    ``nixos-rebuild`` itself sets the system profile, so the boot loader's default follows."""
    return [nix_env, "-p", str(profile), "--set", generation]


def restart_agent(systemctl: str, unit: str = "nixfleet-agent.service") -> list[str]:
    """After a health rollback: the agent unit is ``restartIfChanged = false``, so an agent that
    restarted into the bad generation (to confirm it) would keep running its configuration."""
    return [systemctl, "try-restart", "--no-block", unit]


def activate(generation: str, *, darwin: bool = False) -> list[str]:
    """Activate an already built system generation: ``switch-to-configuration switch`` (NixOS),
    ``activate`` (nix-darwin). The health gate's rollback runs :func:`set_profile` first."""
    return [f"{generation}/activate"] if darwin else [f"{generation}/bin/switch-to-configuration", "switch"]


def boot_default(generation: str) -> list[str]:
    """Make ``generation`` the boot loader's default without activating it (NixOS): the boot loader
    installer takes the default from the toplevel it is run from, not from the profile, so the
    health gate points a reboot during the grace period at the generation known to be good."""
    return [f"{generation}/bin/switch-to-configuration", "boot"]


def system_state(systemctl: str) -> list[str]:
    """``running``, ``degraded``, ``stopping``, ...: a rollback is not activated while the host shuts down."""
    return [systemctl, "is-system-running"]

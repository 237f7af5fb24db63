"""Stand-in system generations for the health gate's root-tier tests.

A "generation" is a directory with ``bin/switch-to-configuration``: ``switch`` writes the
generation's ``state`` into ``$HEALTH_ACTIVE``, points ``$HEALTH_CURRENT`` (the stand-in
``/run/current-system``) at it and makes it the boot default (``$HEALTH_BOOT``), ``boot`` only the
latter, as the real one does; every call is logged to ``$HEALTH_STC_CALLS``. The system profile is a real profile-style symlink tree
(``system -> system-N-link -> <generation>``). The stand-in ``nixos-rebuild switch`` builds
generation N+1 whose state is ``$HEALTH_NEXT`` (good or bad), points the profile at it and
activates it, as the real one does (exit ``$HEALTH_NEW_ACTIVATE_EXIT``: a unit that failed to
start); ``nix-env -p P --set G`` adds a profile generation, as Nix does.
"""

from __future__ import annotations

import os
from pathlib import Path

STC = """#!/bin/sh
gen=@GEN@
printf '%s %s\\n' "$(basename "$gen")" "$1" >> "$HEALTH_STC_CALLS"
echo "$gen" > "$HEALTH_BOOT"
if [ "$1" = boot ]; then echo "boot default $gen"; exit "${HEALTH_BOOT_EXIT:-0}"; fi
echo "activating $gen"
cp "$gen/state" "$HEALTH_ACTIVE"
ln -sfn "$gen" "$HEALTH_CURRENT"
exit "${HEALTH_ACTIVATE_EXIT:-0}"
"""

REBUILD = r"""#!/bin/sh
printf '%s\n' "$*" >> "$SHIM_CALLS"
echo "stand-in nixos-rebuild: $*"
sleep "${HEALTH_BUILD_SLEEP:-0}"
[ "${HEALTH_BUILD_EXIT:-0}" = 0 ] || { echo "build failed"; exit "$HEALTH_BUILD_EXIT"; }
n=$(ls "$HEALTH_STORE" | wc -l); n=$((n + 1))
gen="$HEALTH_STORE/gen$n-$HEALTH_NEXT"
mkdir -p "$gen/bin"
echo "$HEALTH_NEXT gen$n" > "$gen/state"
sed "s|@GEN@|$gen|" "$HEALTH_STC" > "$gen/bin/switch-to-configuration"
chmod +x "$gen/bin/switch-to-configuration"
"$HEALTH_NIX_ENV" -p "$HEALTH_PROFILE" --set "$gen" || exit 1
HEALTH_ACTIVATE_EXIT=${HEALTH_NEW_ACTIVATE_EXIT:-0} "$gen/bin/switch-to-configuration" switch
"""

NIX_ENV = r"""#!/bin/sh
printf 'nix-env %s\n' "$*" >> "$SHIM_CALLS"
[ "$1" = -p ] && [ "$3" = --set ] || { echo "unexpected nix-env $*"; exit 2; }
profile=$2 target=$4
dir=$(dirname "$profile") name=$(basename "$profile")
n=$(ls "$dir" | grep -c "^$name-[0-9]*-link$"); n=$((n + 1))
ln -s "$target" "$dir/$name-$n-link"
ln -sfn "$name-$n-link" "$dir/$name.tmp" && mv -T "$dir/$name.tmp" "$profile"
"""


class Generations:
    def __init__(self, tmp: Path, bin_dir: Path) -> None:
        self.store = tmp / "store"
        self.profiles = tmp / "profiles"
        self.profile = self.profiles / "system"
        self.active = tmp / "active"
        self.current_link = tmp / "current-system"
        self.boot = tmp / "boot-default"
        self.stc_calls = tmp / "stc-calls"
        self.stc = tmp / "stc.in"
        self.stc.write_text(STC)
        self.store.mkdir()
        self.profiles.mkdir()
        for name, text in (("nixos-rebuild", REBUILD), ("nix-env", NIX_ENV)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        self.nix_env = bin_dir / "nix-env"
        first = self.store / "gen1-good"
        (first / "bin").mkdir(parents=True)
        (first / "state").write_text("good gen1\n")
        stc = first / "bin" / "switch-to-configuration"
        stc.write_text(STC.replace("@GEN@", str(first)))
        stc.chmod(0o755)
        (self.profiles / "system-1-link").symlink_to(first)
        self.profile.symlink_to("system-1-link")
        self.active.write_text("good gen1\n")
        self.current_link.symlink_to(first)
        self.boot.write_text(f"{first}\n")
        self.stc_calls.write_text("")

    def variables(self, next_state: str = "good", activate_exit: int = 0, build_exit: int = 0) -> dict[str, str]:
        """What the stand-ins read from their environment."""
        return dict(HEALTH_STORE=str(self.store), HEALTH_PROFILE=str(self.profile), HEALTH_ACTIVE=str(self.active),
                    HEALTH_NIX_ENV=str(self.nix_env), HEALTH_NEXT=next_state, HEALTH_CURRENT=str(self.current_link),
                    HEALTH_BOOT=str(self.boot), HEALTH_STC_CALLS=str(self.stc_calls), HEALTH_STC=str(self.stc),
                    HEALTH_NEW_ACTIVATE_EXIT=str(activate_exit), HEALTH_BUILD_EXIT=str(build_exit))

    def env(self, next_state: str = "good", activate_exit: int = 0, build_exit: int = 0) -> None:
        os.environ.update(self.variables(next_state, activate_exit, build_exit))

    def current(self) -> str:
        return os.path.realpath(self.profile)

    def running(self) -> str:
        return self.active.read_text().strip()

    def boot_default(self) -> str:
        return self.boot.read_text().strip()

    def stc_log(self) -> list[str]:
        return self.stc_calls.read_text().splitlines()

    def healthy_check(self) -> str:
        """A TOML ``[[health.commands]]`` that passes only while a good generation is active."""
        return f'[[health.commands]]\nargv = ["/bin/sh", "-c", "grep -q ^good {self.active}"]\n'

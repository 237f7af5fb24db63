"""The [preflight] and [retention] tables (guard/settings.py) as the agent's config loader reads them:
absent means off, present means on with the documented defaults, every bad value one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfleet_agent import config
from nixfleet_agent.guard import inhibitors, settings

ENV = {"NIXFLEET_URL": "ws://127.0.0.1:1/ws", "NIXFLEET_TOKEN": "t", "NIXFLEET_REPO_URL": "/srv/fleet"}


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return config.load({"config": str(path)}, {**ENV, "NIXFLEET_STATE_DIR": str(tmp_path / "state")})


def test_absent_tables_leave_the_guard_rails_off(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'interval = 5\n')
    assert cfg.guard == settings.Guard()
    assert not cfg.guard.preflight.enable and not cfg.guard.retention.enabled


def test_tables_are_read_with_defaults_for_what_they_leave_out(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[preflight]\nstore_min_free = 2147483648\nboot_paths = ["/boot", "/efi"]\n'
                         '[retention]\nkeep_generations = 5\n')
    pre = cfg.guard.preflight
    assert pre.enable and pre.store_min_free == 2 << 30 and pre.boot_paths == ("/boot", "/efi")
    assert pre.boot_min_free == settings.BOOT_MIN_FREE and pre.boot_kernel_factor == 2 and pre.switch_inhibitors
    assert cfg.guard.retention == settings.Retention(keep_generations=5, gc=False)


@pytest.mark.parametrize(("text", "culprit"), [
    ('[preflight]\nstore_min_free = "1G"\n', "preflight.store_min_free (in "),
    ('[preflight]\nboot_paths = ["boot"]\n', "preflight.boot_paths (in "),
    ('[preflight]\nenable = 1\n', "preflight.enable (in "),
    ('[preflight]\nbootMinFree = 1\n', "preflight.bootMinFree (in "),
    ('[retention]\nkeep_generations = 0\n', "retention.keep_generations (in "),
    ('retention = 3\n', "retention (in "),
])
def test_a_bad_value_is_one_line_naming_it(tmp_path: Path, text: str, culprit: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, text)
    (problem,) = err.value.problems
    assert problem.startswith(culprit), problem


def test_inhibitors_compare_only_keys_in_both(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "switch-inhibitors").write_text('{"a": "1", "b": "2", "gone": "x"}')
    (new / "switch-inhibitors").write_text('{"a": "1", "b": "3", "added": "y"}')
    assert inhibitors.changed(old, new) == ["b: 2 -> 3"]
    assert inhibitors.changed(old, tmp_path / "missing") == []


def test_a_configuration_waiting_for_a_reboot_is_seen(tmp_path: Path) -> None:
    """After ``boot`` instead of ``switch`` the profile points at the new system, the running one
    stays: that counts as needing a reboot although the kernels compare equal."""
    old, new = tmp_path / "system-1", tmp_path / "system-2"
    old.mkdir()
    new.mkdir()
    profile, current = tmp_path / "profile", tmp_path / "current"
    current.symlink_to(old)
    profile.symlink_to(old)
    assert not inhibitors.boot_pending(profile, current)
    profile.unlink()
    profile.symlink_to(new)
    assert inhibitors.boot_pending(profile, current)
    assert not inhibitors.boot_pending(tmp_path / "no-profile", current)

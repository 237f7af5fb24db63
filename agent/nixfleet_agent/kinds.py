"""The closed sets of names the agent passes around, as types instead of bare strings, so a typo
is a type error (mypy) or a clear ValueError when read back from disk, never a silent mismatch.

``str`` enums: they compare equal to, and serialize as, their wire/disk values, so records written
by an older agent still load and frames are unchanged.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

# `status.status` on the wire (what the dashboard's lifecycle understands)
CommandStatus = Literal["ok", "error", "stopped", "warning"]


class Action(StrEnum):
    """What a detached or privileged operation asks the system to do."""

    SWITCH = "switch"
    BOOT = "boot"
    TEST = "test"
    ROLLBACK = "rollback"
    REBOOT = "reboot"


class LaunchMode(StrEnum):
    """How a switch is started outside the agent's process tree (config ``switch_launcher``)."""

    DETACHED = "detached"
    PRIVILEGED = "privileged"


LAUNCHERS: tuple[str, ...] = tuple(mode.value for mode in LaunchMode)  # for messages and checks

"""The ``[reboot]`` and ``[metrics]`` TOML tables (and their ``NIXFLEET_*`` variables).

Kept apart from ``config.py``: these are the only nested settings, and their rules (a time
window, a directory that must be absolute) belong with the features that read them. Problems go
into the same list ``config.load`` reports, one line each, naming the key and where it came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TABLES = ("reboot", "metrics")
ENV_VARS = {
    "reboot.allow": "NIXFLEET_REBOOT_ALLOW",
    "reboot.window": "NIXFLEET_REBOOT_WINDOW",  # "LOWER-UPPER", e.g. "01:00-05:00"
    "reboot.randomized_delay_sec": "NIXFLEET_REBOOT_RANDOMIZED_DELAY_SEC",
    "metrics.textfile_directory": "NIXFLEET_METRICS_TEXTFILE_DIRECTORY",
}
_TIME = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
MAX_DELAY = 86400
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    reboot_allow: bool = False
    # minutes after local midnight; lower == upper means "any time" (a window of a full day)
    window_lower: int = 0
    window_upper: int = 0
    randomized_delay_sec: int = 0
    textfile_directory: str = ""  # "" = no Prometheus text file

    @property
    def window_text(self) -> str:
        return f"{_hhmm(self.window_lower)}-{_hhmm(self.window_upper)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_time(text: object) -> int | None:
    """``"HH:MM"`` (24 h, local time) as minutes after midnight, else None."""
    if not isinstance(text, str):
        return None
    match = _TIME.fullmatch(text.strip())
    return int(match[1]) * 60 + int(match[2]) if match else None


def parse(file_values: dict[str, Any], env: Mapping[str, str], path: str, problems: list[str]) -> Settings:
    """Pop the two tables from ``file_values`` and read them, the environment winning."""
    tables: dict[str, dict[str, Any]] = {}
    for name in TABLES:
        raw = file_values.pop(name, {})
        if not isinstance(raw, dict):
            problems.append(f"{name} (in {path}): must be a table (got {raw!r:.100})")
            raw = {}
        tables[name] = raw
    known = {"reboot": ("allow", "window", "randomized_delay_sec"), "metrics": ("textfile_directory",)}
    for name, table in tables.items():
        for key in table:
            if key not in known[name]:
                problems.append(f"{name}.{key} (in {path}): unknown setting")

    def get(dotted: str) -> tuple[Any, str] | None:
        var = ENV_VARS[dotted]
        if env.get(var, "") != "":
            return env[var], var
        table, key = dotted.split(".")
        if key in tables[table]:
            return tables[table][key], f"{dotted} (in {path})"
        return None

    allow = False
    found = get("reboot.allow")
    if found is not None:
        raw, where = found
        if isinstance(raw, bool):
            allow = raw
        elif isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            allow = raw.strip().lower() in _TRUE
        else:
            problems.append(f"{where}: must be true or false (got {raw!r:.100})")

    lower = upper = 0
    found = get("reboot.window")
    if found is not None:
        raw, where = found
        if isinstance(raw, str):  # the environment's "LOWER-UPPER"
            parts = raw.split("-")
            raw = {"lower": parts[0], "upper": parts[1]} if len(parts) == 2 else {}
        bounds = [parse_time(raw.get(k)) if isinstance(raw, dict) else None for k in ("lower", "upper")]
        if bounds[0] is None or bounds[1] is None or (isinstance(raw, dict) and set(raw) - {"lower", "upper"}):
            problems.append(f"{where}: must be {{ lower = \"HH:MM\", upper = \"HH:MM\" }} in local time "
                            f"(environment: \"HH:MM-HH:MM\") (got {found[0]!r:.100})")
        else:
            lower, upper = bounds[0], bounds[1]

    delay = 0
    found = get("reboot.randomized_delay_sec")
    if found is not None:
        raw, where = found
        try:
            if isinstance(raw, bool):
                raise ValueError
            delay = int(str(raw).strip(), 10)
            if not 0 <= delay <= MAX_DELAY:
                raise ValueError
        except ValueError:
            problems.append(f"{where}: must be an integer number of seconds between 0 and {MAX_DELAY} (got {raw!r:.100})")
            delay = 0

    directory = ""
    found = get("metrics.textfile_directory")
    if found is not None:
        raw, where = found
        if not isinstance(raw, str) or not os.path.isabs(raw.strip()):
            problems.append(f"{where}: must be an absolute directory path (got {raw!r:.100})")
        else:
            directory = raw.strip()
    return Settings(allow, lower, upper, delay, directory)

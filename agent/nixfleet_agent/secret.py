"""A value (token, key material) that must never leak into logs, errors, argv or ``repr``.

Wrapping it in a type makes every accidental ``str()``/``repr()``/f-string render ``***``; code that
really needs the value has to call ``reveal()``, which is easy to audit with grep.
"""

from __future__ import annotations

from .localfile import read_text


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> str:  # never pickled into anything by accident
        raise TypeError("Secret cannot be pickled")


TOKEN_FILE_MAX = 64 * 1024


def read_token_file(path: str) -> str:
    """Accept a bare token or ``NIXFLEET_TOKEN=<token>`` (systemd EnvironmentFile form).

    Bounded, non-blocking and strictly decoded (see ``localfile``): raises LocalFileError."""
    text = read_text(path, TOKEN_FILE_MAX)
    lines = [line.strip().replace("\r", "") for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    for line in lines:
        if line.startswith("NIXFLEET_TOKEN="):
            return line[len("NIXFLEET_TOKEN=") :].strip().strip('"').strip("'")
    if len(lines) == 1:
        return lines[0]  # a bare token (it may itself contain '=')
    return ""

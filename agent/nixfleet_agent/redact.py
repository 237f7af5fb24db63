"""Credential redaction shared by every path that prints a URL: logs, errors and command output.

A fleet repo URL may carry a token (``https://TOKEN@host/...``); git hides it in its own messages,
nix and other tools do not. Kept free of heavy imports because the reporter runs it on every line.
"""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s'\"@]+(?:@[^/\s'\"@]+)*)@")


def _replace(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    if scheme.lower().startswith(("http", "ftp")):
        return f"{scheme}***@"
    if ":" in userinfo:
        return f"{scheme}{userinfo.split(':', 1)[0]}:***@"
    return match.group(0)


def redact(text: str) -> str:
    """Hide credentials embedded in URLs.

    HTTP(S) userinfo is hidden entirely because hosting services accept a bare token as the user
    name (``https://TOKEN@host``); for other schemes only a password is hidden, the user name
    (``ssh://git@host``) is useful when debugging and is not a secret.
    """
    if "@" not in text:  # the common case: one substring test, no regex
        return text
    return _URL_USERINFO.sub(_replace, text)

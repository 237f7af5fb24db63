"""Credential redaction at every boundary where text leaves the process - one function, used by
``link.protocol.encode`` (every frame), ``log`` (every log line), ``status`` (state.json) and
``check``'s output.

A fleet repo URL may carry a token (``https://TOKEN@host/...``), so may a dashboard URL
(``wss://user:pass@host/ws``); git hides it in its own messages, nix and other tools do not. Kept
free of heavy imports because it runs on every frame.
"""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s'\"@]+(?:@[^/\s'\"@]+)*)@")


def _replace(match: re.Match[str]) -> str:
    scheme, userinfo = match.group("scheme"), match.group("userinfo")
    if scheme.lower().startswith(("http", "ftp", "ws")):
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


def without_userinfo(url: str) -> str:
    """The URL with no user name or password at all (what the dashboard may store and show)."""
    if "@" not in url:
        return url
    return _URL_USERINFO.sub(lambda m: m.group("scheme"), url, count=1)

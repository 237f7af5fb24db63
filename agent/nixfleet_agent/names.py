"""The two name rules shared by the agent, the root side and the modules, in one place.

A host name names the flake output root builds (and must equal modules/options.nix
``hostnameRegex``; a test compares them); an operation id becomes a path component in the agent's
state directory and in root's results directory, so it can never be ``.``, ``..`` or contain ``/``.
"""

from __future__ import annotations

import re

HOSTNAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}")
HOSTNAME_RULE = "1-63 characters of A-Z a-z 0-9 . _ -, not starting with ."
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def valid_id(op_id: object) -> bool:
    """True for an id that is safe as a single path component (never ``.``/``..``/``a/b``)."""
    return isinstance(op_id, str) and ID_RE.fullmatch(op_id) is not None and not op_id.startswith(".")

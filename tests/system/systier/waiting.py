"""Bounded waits: every wait in the system tier ends, with a message saying what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """An AssertionError so pytest shows the message as a test failure, not an internal error."""


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` seconds.

    `detail` is called only on failure, to attach diagnostics (journal tail, boot log) to the
    message, so a failed wait explains itself instead of hanging or saying "timeout".
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = ""
            if detail is not None:
                try:
                    extra = "\n" + detail()
                except Exception as exc:  # noqa: BLE001 - diagnostics must never hide the real failure
                    extra = f"\n(diagnostics failed: {exc})"
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)

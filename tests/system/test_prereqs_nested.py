"""The system tier refuses to nest inside an nspawn-booted machine with a reason, instead of hanging."""

from __future__ import annotations

from pathlib import Path

import pytest

from systier import prereqs


def test_nested_nspawn_is_a_skip_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "container"
    marker.write_text("systemd-nspawn\n")
    real_path = prereqs.Path
    monkeypatch.setattr(prereqs, "Path", lambda p: marker if p == "/run/systemd/container" else real_path(p))
    monkeypatch.setattr(prereqs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(prereqs.shutil, "which", lambda tool: "/usr/bin/" + tool)
    reason = prereqs.missing_reason()
    assert reason is not None and "systemd-nspawn" in reason and "on the host" in reason
    marker.write_text("docker\n")
    assert prereqs.missing_reason() is None

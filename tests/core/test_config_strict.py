"""Issue 13, item 8: every configuration gap is exit 2 with one line naming the setting.

Real agent processes (``nixfleet-agent check``-less runs exit 2 before connecting); the token and
config files are real FIFOs, devices, huge and non-UTF-8 files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from nixfleet_agent.config import HOSTNAME_RE
from support import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
           "NIXFLEET_URL": "ws://127.0.0.1:9/ws", "NIXFLEET_TOKEN": "t0ken",
           "NIXFLEET_STATE_DIR": str(tmp_path / "state"), "NIXFLEET_REPO_DIR": str(tmp_path / "repo"),
           "NIXFLEET_HOSTNAME": "test-host"}
    env.update(more)
    return {k: v for k, v in env.items() if v != ""}


def _one_line(tmp_path: Path, culprit: str, **more: str) -> str:
    result = run_cli([], _env(tmp_path, **more), timeout=20)  # a hang fails with TimeoutExpired
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert culprit in lines[0], lines[0]
    return lines[0]


def test_unclosed_ipv6_bracket(tmp_path: Path) -> None:
    _one_line(tmp_path, "NIXFLEET_URL: not a usable URL", NIXFLEET_URL="ws://[::1/ws")


def test_config_file_not_utf8(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_bytes(b'location = "caf\xe9"\n')
    _one_line(tmp_path, "not UTF-8", NIXFLEET_CONFIG=str(conf))


@pytest.mark.parametrize("kind", ["huge", "zero", "fifo", "crlf", "env-crlf"])
def test_bad_token_sources(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "token"
    more = {"NIXFLEET_TOKEN": ""}
    if kind == "huge":
        path.write_bytes(b"a" * (2 << 20))
    elif kind == "zero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "crlf":
        path.write_bytes(b"abc\r\nX-Evil: 1\n")  # two lines: not one token
    if kind == "env-crlf":
        more = {"NIXFLEET_TOKEN": "abc\r\nX-Evil: 1"}
        culprit = "NIXFLEET_TOKEN: contains a control character"
    else:
        more["NIXFLEET_TOKEN_FILE"] = str(path)
        culprit = "NIXFLEET_TOKEN_FILE"
    line = _one_line(tmp_path, culprit, **more)
    assert "X-Evil" not in line and "abc" not in line  # the token itself is never echoed


@pytest.mark.parametrize("var", ["NIXFLEET_STATE_DIR", "NIXFLEET_REPO_DIR", "NIXFLEET_SSH_KEY", "NIXFLEET_TOKEN_FILE"])
def test_relative_paths_refused(tmp_path: Path, var: str) -> None:
    more = {var: "relstate"}
    if var == "NIXFLEET_TOKEN_FILE":
        more["NIXFLEET_TOKEN"] = ""
    line = _one_line(tmp_path, f"{var}: must be an absolute path", **more)
    assert "relstate" in line


def _module_regex() -> re.Pattern[str]:
    module = ROOT / "modules" / "options.nix"
    if not module.exists():
        pytest.skip("no modules/ in this tree (the package's check phase has only agent/ and tests)")
    text = module.read_text()
    found = re.search(r'hostnameRegex = "([^"]+)";', text)
    assert found, "hostnameRegex not found in modules/options.nix"
    return re.compile(found.group(1))


NAMES = ["..", ".", ".hidden", "a;b", "hé", "a\x01b", "a b", "a/b", "x" * 64, "x" * 63, "web-1.example.com", "_h", "-h"]


@pytest.mark.parametrize("name", NAMES)
def test_host_names_follow_the_module_rule(tmp_path: Path, name: str) -> None:
    module_ok = _module_regex().fullmatch(name) is not None
    assert (HOSTNAME_RE.fullmatch(name) is not None) == module_ok
    if not module_ok and "\x01" not in name:
        _one_line(tmp_path, "NIXFLEET_HOSTNAME: not a usable host name", NIXFLEET_HOSTNAME=name)

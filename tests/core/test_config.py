"""Configuration: precedence, token sources, and one precise error per problem (exit 2, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nixfleet_agent.config import ConfigError, load, read_token_file
from support import package_root, run_cli

BASE = {"NIXFLEET_URL": "ws://127.0.0.1:9/ws", "NIXFLEET_TOKEN": "tok-123", "NIXFLEET_REPO_URL": "/srv/fleet.git",
        "NIXFLEET_HOSTNAME": "web1", "NIXFLEET_STATE_DIR": "/tmp/nixfleet-test-state", "NIXFLEET_PLATFORM": "nixos"}


def problems(env: dict[str, str], cli: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(cli or {}, env)
    return info.value.problems


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_match_upstream():
    cfg = load({}, BASE)
    assert (cfg.interval, cfg.branch, cfg.location, cfg.device_type, cfg.log_level) == (5, "main", "home", "desktop", "info")
    assert cfg.repo_dir == Path("/tmp/nixfleet-test-state/repo") and cfg.isolated
    assert (cfg.ping_interval, cfg.ping_timeout, cfg.handshake_timeout, cfg.backoff_max) == (10, 30, 10, 60)
    assert cfg.outbox_max == 10000 and cfg.restart_exit_code == 101
    assert cfg.rebuild_command == ("nixos-rebuild",)


def test_precedence_cli_over_env_over_file_over_default(tmp_path):
    toml = write(tmp_path / "agent.toml", 'interval = 30\nbranch = "from-file"\nlocation = "cloud"\nlog_level = "warn"\n')
    env = dict(BASE, NIXFLEET_CONFIG=str(toml), NIXFLEET_INTERVAL="20", NIXFLEET_BRANCH="from-env")
    cfg = load({"interval": "10"}, env)
    assert cfg.interval == 10  # CLI beats env and file
    assert cfg.branch == "from-env"  # env beats file
    assert cfg.location == "cloud"  # file beats default
    assert cfg.log_level == "warn"
    assert cfg.device_type == "desktop"  # default


def test_config_path_from_cli_beats_env(tmp_path):
    a = write(tmp_path / "a.toml", 'branch = "a"\n')
    b = write(tmp_path / "b.toml", 'branch = "b"\n')
    cfg = load({"config": str(b)}, dict(BASE, NIXFLEET_CONFIG=str(a)))
    assert cfg.branch == "b"


def test_every_setting_is_expressible_in_toml(tmp_path):
    toml = write(tmp_path / "all.toml", "\n".join([
        'url = "wss://fleet.example.com/ws"', f'token_file = "{write(tmp_path / "t", "abc")}"',
        'repo_url = "git@example.com:fleet.git"', 'branch = "prod"', f'repo_dir = "{tmp_path / "r"}"',
        'ssh_key_file = "/run/key"', 'known_hosts_file = "/etc/kh"', "interval = 7", 'log_level = "debug"',
        'hostname = "h1"', 'location = "work"', 'device_type = "laptop"', 'theme_color = "#fff"',
        'nixpkgs_version = "24.11"', f'state_dir = "{tmp_path / "s"}"', 'platform = "darwin"',
        'rebuild_command = ["darwin-rebuild", "--show-trace"]', 'switch_launcher = "privileged"',
        'privileged_dir = "/p"', "ping_interval = 5", "ping_timeout = 20", "handshake_timeout = 4",
        "backoff_max = 30", "git_timeout = 60", 'git_author_name = "bot"', 'git_author_email = "bot@x"',
        "update_attempts = 3", "outbox_max = 500", "stop_grace = 2", "restart_exit_code = 75",
    ]))
    cfg = load({"config": str(toml)}, {})
    assert cfg.url == "wss://fleet.example.com/ws" and cfg.token.reveal() == "abc"
    assert cfg.rebuild_command == ("darwin-rebuild", "--show-trace") and cfg.platform == "darwin"
    assert (cfg.interval, cfg.ping_timeout, cfg.outbox_max, cfg.restart_exit_code) == (7, 20, 500, 75)
    assert cfg.repo_dir == tmp_path / "r" and cfg.switch_launcher == "privileged"


@pytest.mark.parametrize("env, expected", [
    ({"NIXFLEET_INTERVAL": "0"}, "NIXFLEET_INTERVAL: must be between 1 and 3600 (got '0')"),
    ({"NIXFLEET_INTERVAL": "-5"}, "NIXFLEET_INTERVAL: must be between 1 and 3600 (got '-5')"),
    ({"NIXFLEET_INTERVAL": "5s"}, "NIXFLEET_INTERVAL: must be an integer number of seconds (got '5s')"),
    ({"NIXFLEET_URL": "https://fleet.example.com/ws"}, "NIXFLEET_URL: must be a ws:// or wss:// URL with a host (got 'https://fleet.example.com/ws')"),
    ({"NIXFLEET_URL": "ws://"}, "NIXFLEET_URL: must be a ws:// or wss:// URL with a host (got 'ws://')"),
    ({"NIXFLEET_URL": "ws://host:99999/ws"}, "NIXFLEET_URL: invalid port (got 'ws://host:99999/ws')"),
    ({"NIXFLEET_LOG_LEVEL": "verbose"}, "NIXFLEET_LOG_LEVEL: must be one of debug, info, warn, error (got 'verbose')"),
    ({"NIXFLEET_PLATFORM": "windows"}, "NIXFLEET_PLATFORM: must be one of nixos, darwin, home-manager (got 'windows')"),
    ({"NIXFLEET_SWITCH_LAUNCHER": "sudo"}, "NIXFLEET_SWITCH_LAUNCHER: must be one of detached, privileged (got 'sudo')"),
    ({"NIXFLEET_PING_TIMEOUT": "5", "NIXFLEET_PING_INTERVAL": "10"}, "NIXFLEET_PING_TIMEOUT: must be greater than ping_interval (10) (got 5)"),
    ({"NIXFLEET_OUTBOX_MAX": "10"}, "NIXFLEET_OUTBOX_MAX: must be between 100 and 1000000 (got '10')"),
    ({"NIXFLEET_HOSTNAME": "bad host"}, "NIXFLEET_HOSTNAME: not a usable host name (got 'bad host')"),
    ({"NIXFLEET_REBUILD_COMMAND": "'unterminated"}, "NIXFLEET_REBUILD_COMMAND: cannot split into words: No closing quotation (got \"'unterminated\")"),
    ({"NIXFLEET_CA_FILE": "/nonexistent/ca.pem"}, "NIXFLEET_CA_FILE: cannot read CA file (got '/nonexistent/ca.pem')"),
    ({"NIXFLEET_URL": ""}, "NIXFLEET_URL: required (the dashboard WebSocket URL, e.g. wss://fleet.example.com/ws)"),
    ({"NIXFLEET_REPO_URL": ""}, "NIXFLEET_REPO_URL: NIXFLEET_REPO_URL or NIXFLEET_REPO_DIR is required"),
    ({"NIXFLEET_AGENT_INPUT": "nix fleet"}, "NIXFLEET_AGENT_INPUT: not a flake input name (got 'nix fleet')"),
    ({"NIXFLEET_NIXCFG": "/home/me/nixcfg"}, "NIXFLEET_NIXCFG: set either repo_url (the agent's own clone) or the "
     "deprecated config_repo (your checkout), not both (got config_repo='/home/me/nixcfg')"),
])
def test_each_bad_value_gets_one_precise_error(env, expected):
    assert problems(dict(BASE, **env)) == [expected]


def test_all_problems_reported_together():
    found = problems(dict(BASE, NIXFLEET_INTERVAL="0", NIXFLEET_URL="http://x", NIXFLEET_LOG_LEVEL="loud"))
    assert len(found) == 3
    assert [p.split(":")[0] for p in found] == ["NIXFLEET_INTERVAL", "NIXFLEET_URL", "NIXFLEET_LOG_LEVEL"]


def test_file_errors_name_key_and_file(tmp_path):
    toml = write(tmp_path / "a.toml", 'interval = "often"\nbogus = 1\ntoken = "x"\nrebuild_command = 5\n')
    found = problems({k: v for k, v in BASE.items()}, {"config": str(toml)})
    assert f"bogus (in {toml}): unknown setting" in found
    assert f"token (in {toml}): unknown setting (the token is never read from the config file; use token_file)" in found
    assert f"interval (in {toml}): must be an integer number of seconds (got 'often')" in found
    assert f"rebuild_command (in {toml}): must be a list of strings (got '5')" in found


def test_unparsable_and_missing_config_file(tmp_path):
    bad = write(tmp_path / "bad.toml", "url = \n")
    assert problems(BASE, {"config": str(bad)})[0].startswith(f"config file: '{bad}' is not valid TOML: ")
    assert problems(BASE, {"config": str(tmp_path / "nope.toml")}) == [
        f"config file: cannot read '{tmp_path / 'nope.toml'}': No such file or directory"]


@pytest.mark.parametrize("content", ["s3cr3t", "s3cr3t\n", "  s3cr3t  \r\n", "NIXFLEET_TOKEN=s3cr3t\n",
                                     "# comment\nOTHER=1\nNIXFLEET_TOKEN=s3cr3t\n", 'NIXFLEET_TOKEN="s3cr3t"\n'])
def test_token_file_formats(tmp_path, content):
    path = write(tmp_path / "token", content)
    assert read_token_file(str(path)) == "s3cr3t"
    env = {k: v for k, v in BASE.items() if k != "NIXFLEET_TOKEN"}
    cfg = load({}, dict(env, NIXFLEET_TOKEN_FILE=str(path)))
    assert cfg.token.reveal() == "s3cr3t"


def test_token_sources_order(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "token", "from-credential")
    file_token = write(tmp_path / "tf", "from-file")
    env = {k: v for k, v in BASE.items() if k != "NIXFLEET_TOKEN"}
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    assert load({}, env).token.reveal() == "from-credential"
    assert load({}, dict(env, NIXFLEET_TOKEN_FILE=str(file_token))).token.reveal() == "from-file"
    assert load({}, dict(env, NIXFLEET_TOKEN_FILE=str(file_token), NIXFLEET_TOKEN="from-env")).token.reveal() == "from-env"


def test_token_problems(tmp_path):
    env = {k: v for k, v in BASE.items() if k != "NIXFLEET_TOKEN"}
    assert problems(env) == ["NIXFLEET_TOKEN: required; set NIXFLEET_TOKEN, NIXFLEET_TOKEN_FILE (token_file) "
                             "or provide the systemd credential 'token'"]
    missing = tmp_path / "missing"
    assert problems(dict(env, NIXFLEET_TOKEN_FILE=str(missing))) == [
        f"NIXFLEET_TOKEN_FILE: cannot read token file '{missing}': No such file or directory"]
    empty = write(tmp_path / "empty", "\n\n")
    assert problems(dict(env, NIXFLEET_TOKEN_FILE=str(empty))) == [
        f"NIXFLEET_TOKEN_FILE: token file '{empty}' contains no token"]


def test_token_file_that_is_a_directory(tmp_path):
    env = {k: v for k, v in BASE.items() if k != "NIXFLEET_TOKEN"}
    assert problems(dict(env, NIXFLEET_TOKEN_FILE=str(tmp_path))) == [
        f"NIXFLEET_TOKEN_FILE: cannot read token file '{tmp_path}': Is a directory"]


def test_unreadable_token_file(tmp_path):
    """A token file the agent's user may not read (wrong owner after a secrets deploy) gets an error
    naming the file. As root every file is readable, so the check runs as an unprivileged user."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    env = {k: v for k, v in BASE.items() if k != "NIXFLEET_TOKEN"}
    if os.geteuid() != 0:
        path = write(tmp_path / "token", "x")
        path.chmod(0)
        assert problems(dict(env, NIXFLEET_TOKEN_FILE=str(path))) == [
            f"NIXFLEET_TOKEN_FILE: cannot read token file '{path}': Permission denied"]
        return
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root for this check")
    shared = Path(tempfile.mkdtemp(prefix="nixfleet-unreadable-"))
    try:
        shared.chmod(0o711)
        path = write(shared / "token", "x")
        path.chmod(0o600)  # root's, so nobody cannot read it
        # The child needs only the package (config is stdlib-only) and an interpreter `nobody` can
        # run: copy the package next to the token instead of pointing into the checkout, which may
        # sit under a 0700 home, and use the base interpreter (a venv may live under one too).
        lib = shared / "lib"
        shutil.copytree(package_root() / "nixfleet_agent", lib / "nixfleet_agent",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for item in [lib, *lib.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        python = getattr(sys, "_base_executable", None) or sys.executable
        code = (f"import json, sys; sys.path.insert(0, {str(lib)!r})\n"
                "from nixfleet_agent.config import ConfigError, load\n"
                "try:\n    load({}, json.loads(sys.argv[1]))\nexcept ConfigError as e:\n    print(json.dumps(e.problems))")
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-I", "-c", code,
             json.dumps(dict(env, NIXFLEET_TOKEN_FILE=str(path), NIXFLEET_STATE_DIR=str(shared / "state")))],
            capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]},
            cwd="/",
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [f"NIXFLEET_TOKEN_FILE: cannot read token file '{path}': Permission denied"]
    finally:
        shutil.rmtree(shared)


def test_token_never_in_repr_str_or_errors(tmp_path):
    cfg = load({}, dict(BASE, NIXFLEET_TOKEN="hunter2-secret"))
    assert "hunter2-secret" not in repr(cfg) and "hunter2-secret" not in str(cfg)
    assert "hunter2-secret" not in f"{cfg.token} {cfg.token!r}"
    found = problems(dict(BASE, NIXFLEET_TOKEN="hunter2-secret", NIXFLEET_INTERVAL="0", NIXFLEET_URL="x"))
    assert all("hunter2-secret" not in p for p in found)


def test_legacy_config_repo_wins_in_legacy_mode():
    env = {k: v for k, v in BASE.items() if k != "NIXFLEET_REPO_URL"}
    cfg = load({}, dict(env, NIXFLEET_NIXCFG="/home/u/nixcfg", NIXFLEET_REPO_DIR="/var/lib/nixfleet-agent/repo"))
    assert cfg.repo_dir == Path("/home/u/nixcfg") and not cfg.isolated


def test_cli_exits_2_with_precise_messages_and_no_traceback(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "NIXFLEET_URL": "http://fleet", "NIXFLEET_INTERVAL": "0",
           "NIXFLEET_TOKEN": "hunter2-secret", "NIXFLEET_REPO_DIR": str(tmp_path), "NIXFLEET_STATE_DIR": str(tmp_path)}
    result = run_cli([], env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "NIXFLEET_INTERVAL: must be between 1 and 3600 (got '0')" in result.stderr
    assert "NIXFLEET_URL: must be a ws:// or wss:// URL with a host (got 'http://fleet')" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_cli_override_options(tmp_path):
    env = dict(BASE, NIXFLEET_URL="ws://wrong")
    result = run_cli(["--url", "http://still-wrong", "--interval", "0"], {**env, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "--url: must be a ws:// or wss:// URL with a host (got 'http://still-wrong')" in result.stderr
    assert "--interval: must be between 1 and 3600 (got '0')" in result.stderr


GOLDEN = sorted((Path(__file__).resolve().parent.parent / "golden").glob("*/nixfleet-agent.toml"))


@pytest.mark.skipif(not GOLDEN, reason="no golden module outputs (tests/golden/*/nixfleet-agent.toml) in this checkout")
# ids as a list, not a function: pytest < 8.4 (nixos-25.05 ships 8.3) calls an ids function with a
# placeholder for an empty parameter set and fails collection (the package's fileset has no golden/)
@pytest.mark.parametrize("path", GOLDEN, ids=[p.parent.name for p in GOLDEN])
def test_config_files_rendered_by_the_nix_modules_load(path, tmp_path):
    """The TOML the Nix modules generate is accepted as-is (the token arrives separately)."""
    cfg = load({"config": str(path)}, {"NIXFLEET_TOKEN": "x", "STATE_DIRECTORY": str(tmp_path)})
    assert cfg.url.startswith(("ws://", "wss://")) and cfg.repo_dir


def test_agent_input_defaults_to_the_readme_input_name():
    """The README (and the modules' agentInput default) call this flake `nixfleet-agent` in a fleet
    flake; upstream fleets, whose input was `nixfleet`, say so with agent_input."""
    assert load({}, BASE).agent_input == "nixfleet-agent"
    assert load({}, dict(BASE, NIXFLEET_AGENT_INPUT="nixfleet")).agent_input == "nixfleet"

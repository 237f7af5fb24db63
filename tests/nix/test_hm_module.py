"""The Home Manager module, evaluated with the complete Home Manager module set by the nix-harness.

macOS: launchd runs the packaged executable with its config file, keeps it alive, logs under
~/Library/Logs, and a watchdog job re-loads, starts or restarts it. Linux: a systemd user service
runs the same command. Secrets appear in neither: the agent reads tokenFile itself.
"""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest

from nix_harness_support import REPO, eval_json, nix_arg, parse_unit, run

TOKEN_FILE = "/Users/alice/.config/nixfleet/token"
GOOD = {
    "enable": True,
    "url": "wss://fleet.example.com/ws",
    "tokenFile": TOKEN_FILE,
    "repoUrl": "git@github.com:example/nixcfg.git",
    "deviceType": "laptop",
}


def settings(**overrides: object) -> str:
    agent = {k: v for k, v in {**GOOD, **overrides}.items() if v is not None}
    return nix_arg({"services": {"nixfleet-agent": agent}})


@pytest.fixture(scope="module")
def darwin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hm-darwin")
    proc = run("hm", "hm-good.nix", out)
    assert proc.returncode == 0, proc.stdout
    return out


@pytest.fixture(scope="module")
def linux(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("hm-linux")
    proc = run("hm", "hm-good.nix", out, "--argstr", "system", "x86_64-linux")
    assert proc.returncode == 0, proc.stdout
    return out, proc.stdout


def plist(out: Path, label: str) -> dict[str, object]:
    return plistlib.loads((out / "launchd" / f"{label}.plist").read_bytes())


def program(job: dict[str, object]) -> list[str]:
    """The command launchd runs; Home Manager wraps it in `/bin/sh -c "wait4path && exec ..."`."""
    args = job["ProgramArguments"]
    assert isinstance(args, list)
    assert args[:2] == ["/bin/sh", "-c"] and args[2].startswith("/bin/wait4path /nix/store && exec ")
    return args[2].removeprefix("/bin/wait4path /nix/store && exec ").split(" ")


def test_launchd_agent_runs_the_package(darwin: Path) -> None:
    job = plist(darwin, "com.nixfleet.agent")
    assert job["Label"] == "com.nixfleet.agent"
    assert job["RunAtLoad"] is True and job["KeepAlive"] is True
    exe, flag, config = program(job)
    assert exe.startswith("/nix/store/") and exe.endswith("-nixfleet-agent-0.1.0/bin/nixfleet-agent")
    assert flag == "--config" and config.endswith("-nixfleet-agent.toml")
    assert job["StandardOutPath"] == "/Users/alice/Library/Logs/nixfleet-agent/agent.log"
    assert job["StandardErrorPath"] == "/Users/alice/Library/Logs/nixfleet-agent/agent.log"
    # what the module sets, before Home Manager's wait4path wrapper
    raw = eval_json("hm-good.nix", "config.launchd.agents.nixfleet-agent.config.ProgramArguments")
    assert raw == [exe, "--config", config]


def test_no_secret_in_plists_or_environment(darwin: Path) -> None:
    job = plist(darwin, "com.nixfleet.agent")
    assert set(job["EnvironmentVariables"]) == {"PATH"}  # type: ignore[arg-type]
    for label in ("com.nixfleet.agent", "com.nixfleet.watchdog"):
        text = (darwin / "launchd" / f"{label}.plist").read_text()
        assert "TOKEN" not in text.upper() and TOKEN_FILE not in text
    config = eval_json("hm-good.nix", "config.services.nixfleet-agent.settings")
    assert isinstance(config, dict)
    assert config["token_file"] == TOKEN_FILE  # a path the agent reads, never the token itself
    assert "token" not in config


def test_watchdog_job(darwin: Path) -> None:
    job = plist(darwin, "com.nixfleet.watchdog")
    assert job["StartInterval"] == 30 and job["RunAtLoad"] is True
    assert "KeepAlive" not in job
    shell, script, label, agent_plist, alive, max_age = program(job)
    assert shell == "/bin/sh" and script.endswith("-watchdog.sh")
    assert label == "com.nixfleet.agent"
    assert agent_plist == "/Users/alice/Library/LaunchAgents/com.nixfleet.agent.plist"
    assert alive == "/Users/alice/.local/state/nixfleet-agent/alive"
    assert max_age == "120"
    assert job["StandardOutPath"] == "/Users/alice/Library/Logs/nixfleet-agent/watchdog.log"


def test_watchdog_script_is_the_repository_file() -> None:
    # the store copy's name ends in the file's base name; its content is what tests/watchdog runs
    source = eval_json("hm-good.nix", 'config.launchd.agents.nixfleet-watchdog.config.ProgramArguments')
    assert isinstance(source, list) and source[1].endswith("-watchdog.sh")
    assert (REPO / "modules" / "watchdog.sh").is_file()


def test_watchdog_follows_a_relocated_state_dir() -> None:
    args = eval_json("hm-good.nix", "config.launchd.agents.nixfleet-watchdog.config.ProgramArguments",
                     "--arg", "settings", settings(settings={"state_dir": "/Users/alice/fleet-state"}))
    assert isinstance(args, list) and args[4] == "/Users/alice/fleet-state/alive"


def test_log_directory_is_created_before_agents_load() -> None:
    entry = eval_json("hm-good.nix", "config.home.activation.nixfleetAgentLogDir")
    assert isinstance(entry, dict)
    assert entry["before"] == ["setupLaunchAgents"]
    assert "/Users/alice/Library/Logs/nixfleet-agent" in entry["data"]


def test_linux_user_service(linux: tuple[Path, str]) -> None:
    out, output = linux
    parsed = parse_unit((out / "systemd-user" / "nixfleet-agent.service").read_text())
    exe, flag, config = parsed["Service"]["ExecStart"][0].split(" ")
    assert exe.endswith("/bin/nixfleet-agent") and flag == "--config" and config.endswith("-nixfleet-agent.toml")
    assert parsed["Service"]["Restart"] == ["always"]
    assert parsed["Install"]["WantedBy"] == ["default.target"]
    assert "Environment" not in parsed["Service"] and "EnvironmentFile" not in parsed["Service"]
    assert not (out / "launchd").exists() or not list((out / "launchd").iterdir())  # no launchd on Linux
    if "systemd-analyze verify" in output:
        assert "systemd-analyze verify (as system units in a fake root): OK" in output


@pytest.mark.parametrize("system", ["aarch64-darwin", "x86_64-linux"])
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": None}, "services.nixfleet-agent.url must be set"),
        ({"tokenFile": None}, "services.nixfleet-agent.tokenFile must be set"),
        ({"repoUrl": None}, "set services.nixfleet-agent.repoUrl to the Git URL"),
        ({"configRepo": "/Users/alice/nixcfg"}, "set only one of services.nixfleet-agent.repoUrl and"),
        ({"tokenFile": "/nix/store/0000000000000000000000000000000a-token"},
         "services.nixfleet-agent.tokenFile is inside the Nix store"),
        ({"watchdog": {"maxAge": 5}}, "services.nixfleet-agent.watchdog.maxAge (5) must exceed"),
        ({"settings": {"token": "secret"}}, "services.nixfleet-agent.settings.token would put the token"),
    ],
    ids=["no-url", "no-token", "no-repo", "both-repos", "token-in-store", "watchdog-too-eager", "token-in-settings"],
)
def test_each_assertion_fires(tmp_path: Path, system: str, overrides: dict[str, object], message: str) -> None:
    proc = run("hm", "hm-good.nix", tmp_path, "--argstr", "system", system,
               "--arg", "settings", settings(**overrides))
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout


def test_config_repo_warns(tmp_path: Path) -> None:
    proc = run("hm", "hm-good.nix", tmp_path, "--arg", "settings",
               settings(repoUrl=None, configRepo="/Users/alice/nixcfg"))
    assert proc.returncode == 0, proc.stdout
    assert "services.nixfleet-agent.configRepo is deprecated" in proc.stdout

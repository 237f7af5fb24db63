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
    # activation leaves a changed agent unit running (a restart would SIGTERM the switch the agent
    # runs); the agent restarts itself after the switch when its definition changed (issue 13)
    assert parsed["Unit"]["X-RestartIfChanged"] == ["false"]
    # only PATH (no secret: the agent reads tokenFile itself); no system target it cannot see
    assert [e.partition("=")[0] for e in parsed["Service"]["Environment"]] == ["PATH"]
    assert "EnvironmentFile" not in parsed["Service"]
    assert "network-online.target" not in (out / "systemd-user" / "nixfleet-agent.service").read_text()
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


def unit_path(out: Path) -> list[str]:
    env = parse_unit((out / "systemd-user" / "nixfleet-agent.service").read_text())["Service"]["Environment"]
    assert len(env) == 1 and env[0].startswith("PATH=")
    return env[0].removeprefix("PATH=").split(":")


# Where nix, home-manager, git and ssh live on each kind of Linux host running a Home Manager
# profile; the user unit's PATH must reach each before the OS's /usr/bin.
LINUX_LAYOUTS = {
    # NixOS, Home Manager as a NixOS module (useUserPackages) or standalone
    "nixos": {"nix": "/run/current-system/sw/bin", "home-manager": "/etc/profiles/per-user/alice/bin",
              "git": "/run/current-system/sw/bin", "ssh": "/run/current-system/sw/bin"},
    # Debian/Ubuntu/...: multi-user Nix install, standalone Home Manager
    "multi-user": {"nix": "/nix/var/nix/profiles/default/bin", "home-manager": "/home/alice/.nix-profile/bin",
                   "git": "/usr/bin", "ssh": "/usr/bin"},
    # single-user Nix install: nix itself sits in the user's profile
    "single-user": {"nix": "/home/alice/.nix-profile/bin", "home-manager": "/home/alice/.nix-profile/bin",
                    "git": "/usr/bin", "ssh": "/usr/bin"},
}


@pytest.mark.parametrize("layout", sorted(LINUX_LAYOUTS))
def test_linux_unit_path_finds_the_tools(linux: tuple[Path, str], layout: str) -> None:
    """systemd's user manager gives units no Nix profile: without the unit's own PATH the agent found
    neither nix nor home-manager off NixOS."""
    path = unit_path(linux[0])
    for tool, directory in LINUX_LAYOUTS[layout].items():
        assert directory in path, (tool, directory, path)
    # the module's own git and ssh come before the OS's, so a host without them still clones
    store = [d for d in path if d.startswith("/nix/store/")]
    assert any(d.endswith("-git-0.0.0-stub/bin") for d in store), path
    assert any(d.endswith("-openssh-0.0.0-stub/bin") for d in store), path
    assert max(path.index(d) for d in store) < path.index("/usr/bin")
    # the user's profile wins over the system's, as in a login shell
    assert path.index("/home/alice/.nix-profile/bin") < path.index("/run/current-system/sw/bin")


def test_launchd_and_systemd_share_one_path(darwin: Path, linux: tuple[Path, str]) -> None:
    """One definition: macOS differs only by Linux's setuid wrappers and by keeping Apple's ssh
    (which understands UseKeychain in ~/.ssh/config)."""
    mac = plist(darwin, "com.nixfleet.agent")["EnvironmentVariables"]["PATH"].split(":")  # type: ignore[index]
    lin = unit_path(linux[0])
    strip = lambda path, home: [d.replace(home, "~") for d in path if not d.startswith("/nix/store/")]  # noqa: E731
    common = strip(mac, "/Users/alice")
    at = common.index("/run/current-system/sw/bin")
    assert strip(lin, "/home/alice") == common[:at] + ["/run/wrappers/bin"] + common[at:]
    assert not any("openssh" in d for d in mac) and any(d.endswith("-git-0.0.0-stub/bin") for d in mac)


def test_linux_agent_switches_home_manager() -> None:
    """A user unit cannot run nixos-rebuild; without platform the agent would pick it on NixOS."""
    linux = eval_json("hm-good.nix", "config.services.nixfleet-agent.settings", "--argstr", "system", "x86_64-linux")
    darwin = eval_json("hm-good.nix", "config.services.nixfleet-agent.settings")
    assert isinstance(linux, dict) and isinstance(darwin, dict)
    assert linux["platform"] == "home-manager"
    assert "platform" not in darwin  # macOS: the agent picks darwin-rebuild or home-manager itself


def test_agent_input_option_renders_agent_input() -> None:
    default = eval_json("hm-good.nix", "config.services.nixfleet-agent.settings")
    upstream = eval_json("hm-good.nix", "config.services.nixfleet-agent.settings",
                         "--arg", "settings", settings(agentInput="nixfleet"))
    assert isinstance(default, dict) and isinstance(upstream, dict)
    assert default["agent_input"] == "nixfleet-agent" and upstream["agent_input"] == "nixfleet"

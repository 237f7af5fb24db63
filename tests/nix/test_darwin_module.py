"""The nix-darwin module, evaluated by the nix-harness against nix-darwin's complete module set.

What is checked here is what nix-darwin renders: the launchd plists (parsed with plistlib), the
users, the activation snippet, the root daemon's start script and the system derivation. No macOS
machine is here, so what launchd does with the plists (WatchPaths firing, KeepAlive, UserName) is
not run; tests/watchdog and tests/privileged run the scripts and the root code with stand-ins.
"""

from __future__ import annotations

import plistlib
import subprocess
from pathlib import Path

import pytest

from nix_harness_support import eval_json, nix_arg, run

AGENT = "com.nixfleet.agent"
PRIVILEGED = "com.nixfleet.agent-privileged"
WATCHDOG = "com.nixfleet.watchdog"
STATE = "/var/lib/nixfleet-agent"
REQUEST = f"{STATE}/privileged/request.json"
TOKEN_FILE = "/run/agenix/nixfleet-token"
KEY_FILE = "/run/agenix/nixfleet-deploy-key"
GOOD = {
    "enable": True,
    "url": "wss://fleet.example.com/ws",
    "tokenFile": TOKEN_FILE,
    "sshKeyFile": KEY_FILE,
    "repoUrl": "git@github.com:example/nixcfg.git",
    "deviceType": "laptop",
}


def settings(**overrides: object) -> str:
    agent = {k: v for k, v in {**GOOD, **overrides}.items() if v is not None}
    return nix_arg({"services": {"nixfleet-agent": agent}})


@pytest.fixture(scope="module")
def darwin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("darwin")
    proc = run("darwin", "darwin-good.nix", out)
    assert proc.returncode == 0, proc.stdout
    return out, proc.stdout


def plist(out: Path, label: str) -> dict[str, object]:
    return plistlib.loads((out / "darwin" / "launchDaemons" / f"{label}.plist").read_bytes())


def wrapped(job: dict[str, object]) -> str:
    """The command behind nix-darwin's `/bin/sh -c "/bin/wait4path /nix/store && exec ..."`."""
    args = job["ProgramArguments"]
    assert isinstance(args, list) and args[:2] == ["/bin/sh", "-c"], args
    prefix = "/bin/wait4path /nix/store && exec "
    assert args[2].startswith(prefix), args
    return args[2].removeprefix(prefix)


def test_agent_is_a_daemon_of_its_own_hidden_user(darwin: tuple[Path, str]) -> None:
    job = plist(darwin[0], AGENT)
    assert job["UserName"] == "_nixfleet-agent" and job["GroupName"] == "_nixfleet-agent"
    assert job["RunAtLoad"] is True and job["KeepAlive"] is True
    exe, flag, config = wrapped(job).split(" ")
    assert exe.endswith("-nixfleet-agent-0.1.0/bin/nixfleet-agent") and flag == "--config"
    assert config.endswith("-nixfleet-agent.toml")
    assert job["WorkingDirectory"] == STATE and job["Umask"] == 0o077
    assert job["StandardOutPath"] == job["StandardErrorPath"] == "/var/log/nixfleet-agent/agent.log"
    env = job["EnvironmentVariables"]
    assert isinstance(env, dict) and set(env) == {"PATH", "HOME"} and env["HOME"] == STATE
    assert env["PATH"].split(":")[:2] == ["/run/current-system/sw/bin", "/nix/var/nix/profiles/default/bin"]


def test_user_and_group_are_created_by_nix_darwin() -> None:
    users = {name: eval_json("darwin-good.nix", f"config.users.{name}")
             for name in ("knownUsers", "knownGroups", 'users."_nixfleet-agent"', 'groups."_nixfleet-agent"')}
    user = users['users."_nixfleet-agent"']
    assert isinstance(user, dict)
    assert (user["uid"], user["gid"], user["isHidden"]) == (536, 536, True)
    assert user["home"] == STATE and user["shell"] == "/usr/bin/false"
    assert "_nixfleet-agent" in users["knownUsers"] and "_nixfleet-agent" in users["knownGroups"]  # type: ignore[operator]
    assert users['groups."_nixfleet-agent"']["gid"] == 536  # type: ignore[index]
    custom = eval_json("darwin-good.nix", "config.users.users._nixfleet-agent.uid",
                       "--arg", "settings", settings(uid=420, gid=420))
    assert custom == 420


def test_directories_exist_before_launchd_loads_the_daemons() -> None:
    script = eval_json("darwin-good.nix", "config.system.activationScripts.script.text")
    assert isinstance(script, str)
    mine = script.index(f"install -d -m 0700 -o 536 -g 536 {STATE}")
    assert script.index("dscl . -create") < mine  # after the users module created the user
    assert "install -d -m 0711 -o root -g wheel /var/lib/nixfleet-agent-privileged" in script
    assert mine < script.index("setting up launchd services")


def test_root_daemon_watches_the_request_file(darwin: tuple[Path, str]) -> None:
    job = plist(darwin[0], PRIVILEGED)
    assert job["WatchPaths"] == [REQUEST]
    assert "UserName" not in job  # root
    assert job["RunAtLoad"] is True and job["KeepAlive"] is False
    assert wrapped(job) == "/etc/nixfleet-agent/privileged"


def test_root_daemon_plist_is_the_same_in_every_generation(tmp_path: Path, darwin: tuple[Path, str]) -> None:
    """nix-darwin's activation unloads (kills) a daemon whose plist changed: the root daemon's plist
    names no store path, so a switch never kills the switch it is running."""
    text = (darwin[0] / "darwin" / "launchDaemons" / f"{PRIVILEGED}.plist").read_text()
    assert "/nix/store/" not in text
    proc = run("darwin", "darwin-good.nix", tmp_path, "--arg", "settings",
               settings(branch="production", privileged={"keepResults": 3}))
    assert proc.returncode == 0, proc.stdout
    assert (tmp_path / "darwin" / "launchDaemons" / f"{PRIVILEGED}.plist").read_text() == text
    agent = (tmp_path / "darwin" / "launchDaemons" / f"{AGENT}.plist").read_text()
    assert agent != (darwin[0] / "darwin" / "launchDaemons" / f"{AGENT}.plist").read_text()


def test_root_start_script_runs_the_root_code_with_darwin_rebuild() -> None:
    etc = eval_json("darwin-good.nix", 'config.environment.etc."nixfleet-agent/privileged".source.text')
    assert isinstance(etc, str)
    exec_line = [line for line in etc.splitlines() if line.startswith("exec ")]
    assert len(exec_line) == 1
    argv = exec_line[0].split(" ")[1:]
    assert argv[0].endswith("/bin/nixfleet-agent-privileged")
    pairs = dict(zip(argv[1::2], argv[2::2]))
    # /var is a symlink on macOS; root opens the request path with O_NOFOLLOW at every step
    assert pairs["--request"] == "/private" + REQUEST
    assert pairs["--out-dir"] == "/var/lib/nixfleet-agent-privileged/results"
    assert pairs["--state-dir"] == "/var/lib/nixfleet-agent-privileged/root"
    assert pairs["--darwin-rebuild"] == "/run/current-system/sw/bin/darwin-rebuild"
    assert pairs["--ssh-key"] == KEY_FILE and pairs["--config"].endswith("-nixfleet-agent.toml")
    assert "export HOME=/var/lib/nixfleet-agent-privileged/root" in etc and "umask 077" in etc


def test_agent_settings_send_switches_to_root() -> None:
    config = eval_json("darwin-good.nix", "config.services.nixfleet-agent.settings")
    assert isinstance(config, dict)
    assert config["platform"] == "darwin" and config["switch_launcher"] == "privileged"
    assert config["state_dir"] == STATE
    assert config["privileged_dir"] == "/var/lib/nixfleet-agent-privileged/results"
    assert config["hostname"] == "mac1"
    assert config["token_file"] == TOKEN_FILE and "token" not in config


def test_watchdog_is_a_root_daemon_in_the_system_domain(darwin: tuple[Path, str]) -> None:
    job = plist(darwin[0], WATCHDOG)
    assert "UserName" not in job and job["StartInterval"] == 30
    shell, script, label, agent_plist, alive, max_age, domain = job["ProgramArguments"]  # type: ignore[misc]
    assert shell == "/bin/sh" and script.endswith("-watchdog.sh")
    assert (label, agent_plist, alive, max_age, domain) == (
        AGENT, f"/Library/LaunchDaemons/{AGENT}.plist", f"{STATE}/alive", "120", "system")
    off = eval_json("darwin-good.nix", "config.launchd.daemons",
                    "--arg", "settings", settings(watchdog={"enable": False}))
    assert isinstance(off, dict) and "nixfleet-agent-watchdog" not in off


def test_no_secret_in_any_plist_or_system_derivation(tmp_path: Path) -> None:
    """The module only passes paths: a token and key written at those paths never reach the store."""
    token, key = tmp_path / "token", tmp_path / "key"
    token.write_text("nixfleet-token-CANARY-7f3a\n")
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY----- KEY-CANARY-91bc\n")
    out = tmp_path / "out"
    proc = run("darwin", "darwin-good.nix", out, "--arg", "settings",
               settings(tokenFile=str(token), sshKeyFile=str(key)))
    assert proc.returncode == 0, proc.stdout
    drv = next(line.split("system: ", 1)[1].strip() for line in proc.stdout.splitlines() if "system: " in line)
    assert Path(drv).is_file()  # system.build.toplevel instantiated
    closure = subprocess.run(["nix-store", "-qR", drv], capture_output=True, text=True, check=True).stdout.split()
    texts = [Path(p).read_text(errors="replace") for p in closure if p.endswith(".drv")]
    texts += [p.read_text() for p in (out / "darwin").rglob("*.plist")]
    assert len(texts) > 20
    for canary in ("CANARY-7f3a", "CANARY-91bc", "NIXFLEET_TOKEN"):
        assert not [t for t in texts if canary in t], canary
    assert any(str(token) in t for t in texts)  # the path is there, as it must be


BAD = [
    ({"url": None}, "services.nixfleet-agent.url must be set"),
    ({"tokenFile": None}, "services.nixfleet-agent.tokenFile must be set"),
    ({"repoUrl": None}, "set services.nixfleet-agent.repoUrl to the Git URL"),
    ({"configRepo": "/Users/alice/nixcfg"}, "set only one of services.nixfleet-agent.repoUrl and"),
    ({"repoUrl": None, "configRepo": "/Users/alice/nixcfg"},
     "services.nixfleet-agent.configRepo (deprecated) is not supported by the nix-darwin module"),
    ({"tokenFile": "/nix/store/0000000000000000000000000000000a-token"},
     "services.nixfleet-agent.tokenFile is inside the Nix store"),
    ({"sshKeyFile": "/nix/store/0000000000000000000000000000000a-key"},
     "services.nixfleet-agent.sshKeyFile is inside the Nix store"),
    ({"settings": {"token": "secret"}}, "services.nixfleet-agent.settings.token would put the token"),
    ({"settings": {"state_dir": "/tmp/x"}}, "services.nixfleet-agent.settings.repo_dir and .state_dir cannot be set"),
    ({"hostname": "bad host"}, "services.nixfleet-agent.hostname must be 1-63 characters"),
    ({"hostname": ".mac"}, "not starting with ."),
    ({"watchdog": {"maxAge": 5}}, "services.nixfleet-agent.watchdog.maxAge (5) must exceed"),
    ({"user": "alice"}, "services.nixfleet-agent.user must be a dedicated service user"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD,
                         ids=["no-url", "no-token", "no-repo", "both-repos", "config-repo", "token-in-store",
                              "key-in-store", "token-in-settings", "state-dir", "bad-hostname", "dot-hostname",
                              "watchdog-too-eager", "primary-user"])
def test_each_assertion_fires(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    proc = run("darwin", "darwin-good.nix", tmp_path, "--arg", "settings", settings(**overrides))
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout


def test_home_manager_agent_on_the_same_host_is_refused(tmp_path: Path) -> None:
    proc = run("darwin", "darwin-good.nix", tmp_path, "--arg", "hmUsers", '[ "alice" ]')
    assert proc.returncode != 0
    assert ("services.nixfleet-agent is enabled both in nix-darwin and in Home Manager for alice: that runs "
            "two agents for one host. Keep the nix-darwin module (it can switch the system as root) and remove "
            "services.nixfleet-agent from home-manager.users.alice.") in proc.stdout, proc.stdout
    # home-manager imported, nobody enables the agent there: fine
    ok = run("darwin", "darwin-good.nix", tmp_path / "ok", "--arg", "hmUsers", "[ ]")
    assert ok.returncode == 0, ok.stdout

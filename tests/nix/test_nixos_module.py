"""The NixOS module, evaluated against NixOS' real systemd module by the nix-harness.

What a host operator relies on: the agent runs the packaged executable unprivileged with its
secrets passed as credentials only, hardened to an exposure score of at most 2.0; the privileged
switch unit is started by the path unit and survives the switch it runs; every misconfiguration
fails evaluation with a message saying what to set.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nix_harness_support import eval_json, exposure, nix_arg, parse_unit, run

TOKEN_FILE = "/run/agenix/nixfleet-token"
SSH_KEY_FILE = "/run/agenix/nixfleet-deploy-key"
GOOD = {
    "enable": True,
    "url": "wss://fleet.example.com/ws",
    "tokenFile": TOKEN_FILE,
    "sshKeyFile": SSH_KEY_FILE,
    "repoUrl": "git@github.com:example/nixcfg.git",
    "location": "cloud",
    "deviceType": "server",
    "themeColor": "#7aa2f7",
}
HARDENING = {
    "DynamicUser": "true",
    "NoNewPrivileges": "true",
    "CapabilityBoundingSet": "",
    "PrivateTmp": "true",
    "PrivateDevices": "true",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "ProtectKernelTunables": "true",
    "ProtectKernelModules": "true",
    "ProtectControlGroups": "true",
    "RestrictNamespaces": "true",
    "RestrictSUIDSGID": "true",
    "LockPersonality": "true",
    "MemoryDenyWriteExecute": "true",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


def settings(**overrides: object) -> str:
    agent = {k: v for k, v in {**GOOD, **overrides}.items() if v is not None}
    return nix_arg({"services": {"nixfleet-agent": agent}})


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("nixos-good")
    proc = run("nixos", "nixos-good.nix", out, "--security")
    assert proc.returncode == 0, proc.stdout
    return out, proc.stdout


def unit(out: Path, name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((out / "units" / name).read_text())


def test_agent_runs_the_package_with_a_store_config_file(good: tuple[Path, str]) -> None:
    out, _ = good
    service = unit(out, "nixfleet-agent.service")["Service"]
    (exec_start,) = service["ExecStart"]
    exe, flag, config = exec_start.split(" ")
    assert exe.startswith("/nix/store/") and exe.endswith("-nixfleet-agent-0.1.0/bin/nixfleet-agent")
    assert flag == "--config"
    assert config.startswith("/nix/store/") and config.endswith("-nixfleet-agent.toml")


def test_secrets_only_as_credentials(good: tuple[Path, str]) -> None:
    out, _ = good
    text = (out / "units" / "nixfleet-agent.service").read_text()
    service = parse_unit(text)["Service"]
    assert service["LoadCredential"] == [f"token:{TOKEN_FILE}", f"ssh-key:{SSH_KEY_FILE}"]
    assert "EnvironmentFile" not in service
    assert not any("TOKEN" in env or "SSH_KEY" in env for env in service.get("Environment", []))
    # the paths appear in LoadCredential and nowhere else, in no unit and not in the config file;
    # root gets its own copy of the deploy key (it fetches repoUrl itself), never the token
    privileged = (out / "units" / "nixfleet-agent-privileged.service").read_text()
    assert parse_unit(privileged)["Service"]["LoadCredential"] == [f"ssh-key:{SSH_KEY_FILE}"]
    assert privileged.count(SSH_KEY_FILE) == 1 and TOKEN_FILE not in privileged
    for path in (TOKEN_FILE, SSH_KEY_FILE):
        assert text.count(path) == 1
        assert path not in (out / "scripts" / "nixfleet-agent.toml").read_text()
    assert "token" not in (out / "scripts" / "nixfleet-agent.toml").read_text()


def test_state_directory_private_and_hardening(good: tuple[Path, str]) -> None:
    out, _ = good
    service = unit(out, "nixfleet-agent.service")["Service"]
    assert service["StateDirectory"] == ["nixfleet-agent"]
    assert service["StateDirectoryMode"] == ["0700"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], key
    assert service["RestrictAddressFamilies"] == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "User" not in service and "NoNewPrivileges" in service


def test_agent_unit_ordering_restart_and_switch_safety(good: tuple[Path, str]) -> None:
    out, _ = good
    parsed = unit(out, "nixfleet-agent.service")
    assert parsed["Unit"]["Wants"] == ["network-online.target"]
    assert parsed["Unit"]["After"] == ["network-online.target"]
    assert parsed["Install"]["WantedBy"] == ["multi-user.target"]
    assert parsed["Service"]["Restart"] == ["always"]
    assert parsed["Service"]["RestartSec"] == ["10"]
    assert parsed["Service"]["X-RestartIfChanged"] == ["false"]


def test_exposure_at_most_1_2(good: tuple[Path, str]) -> None:
    _, output = good
    if "systemd-analyze security nixfleet-agent.service" not in output:
        pytest.skip("systemd-analyze is not installed; no exposure score")
    score = exposure(output, "nixfleet-agent.service")
    print(f"systemd-analyze security nixfleet-agent.service: exposure {score}")
    assert score <= 1.2  # the README promises 1.2 (OK)


def test_units_verify_clean(good: tuple[Path, str]) -> None:
    _, output = good
    if "systemd-analyze verify: OK" not in output:
        assert "systemd-analyze: skipped" in output, output
        pytest.skip("systemd-analyze is not installed")


def test_privileged_unit_survives_the_switch_it_runs(good: tuple[Path, str]) -> None:
    out, _ = good
    parsed = unit(out, "nixfleet-agent-privileged.service")
    service = parsed["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["X-RestartIfChanged"] == ["false"]
    assert parsed["Unit"]["X-StopOnRemoval"] == ["false"]
    # a refused request and its retry must not hit systemd's default start limit (5 in 10 s),
    # which would leave the path unit no longer watching
    assert parsed["Unit"]["StartLimitBurst"] == ["30"] and parsed["Unit"]["StartLimitIntervalSec"] == ["60"]
    assert "Install" not in parsed  # started only by the path unit
    (exec_start,) = service["ExecStart"]
    argv = exec_start.split(" ")
    assert argv[0].endswith("/bin/nixfleet-agent-privileged")
    options = dict(zip(argv[1::2], argv[2::2]))
    assert options["--request"] == "/var/lib/private/nixfleet-agent/privileged/request.json"
    # what to fetch and build comes from the module's config file, never from the agent's clone
    assert options["--config"].startswith("/nix/store/") and options["--config"].endswith("-nixfleet-agent.toml")
    assert "--repo" not in options and "--legacy-repo" not in options
    assert options["--out-dir"] == "/var/lib/nixfleet-agent-privileged/results"
    assert options["--state-dir"] == "/var/lib/nixfleet-agent-privileged/root"
    assert options["--keep"] == "20"
    assert options["--nixos-rebuild"].endswith("/bin/nixos-rebuild")
    assert "--allowed-signers" not in options and "--openpgp-keys" not in options  # opt in
    assert service["StateDirectoryMode"] == ["0711"] and service["UMask"] == ["0077"]
    # however the run ended, ExecStopPost= gives an accepted request its result (issue 13)
    assert service["ExecStopPost"] == [exec_start + " --finalize"]
    assert service["TimeoutStartSec"] == ["7500"]  # systemd's backstop behind root's own deadline


def test_privileged_timeout_reaches_roots_config_and_the_units_backstop() -> None:
    value = eval_json("nixos-good.nix", "config.services.nixfleet-agent.settings.privileged_timeout",
                      "--arg", "settings", settings(privileged={"timeout": 900}))
    assert value == 900
    text = eval_json("nixos-good.nix", 'config.systemd.units."nixfleet-agent-privileged.service".text',
                     "--arg", "settings", settings(privileged={"timeout": 900}))
    assert isinstance(text, str)
    assert parse_unit(text)["Service"]["TimeoutStartSec"] == ["1200"]


def test_path_unit_watches_the_request_and_verifies(good: tuple[Path, str]) -> None:
    out, _ = good
    text = eval_json("nixos-good.nix", 'config.systemd.units."nixfleet-agent-privileged.path".text')
    assert isinstance(text, str)
    parsed = parse_unit(text)
    assert parsed["Path"]["PathExists"] == ["/var/lib/private/nixfleet-agent/privileged/request.json"]
    assert parsed["Path"]["Unit"] == ["nixfleet-agent-privileged.service"]
    assert parsed["Install"]["WantedBy"] == ["paths.target"]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    root = out / "sdroot"
    (root / "etc/systemd/system/nixfleet-agent-privileged.path").write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                           "nixfleet-agent-privileged.path"], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), proc.stderr


def test_agent_config_selects_the_privileged_launcher(good: tuple[Path, str]) -> None:
    settings_ = eval_json("nixos-good.nix", "config.services.nixfleet-agent.settings")
    assert settings_ == {
        "url": "wss://fleet.example.com/ws",
        "repo_url": "git@github.com:example/nixcfg.git",
        "branch": "main",
        "hostname": "web1",
        "interval": 5,
        "log_level": "info",
        "location": "cloud",
        "device_type": "server",
        "theme_color": "#7aa2f7",
        "agent_input": "nixfleet-agent",
        "switch_launcher": "privileged",
        "privileged_dir": "/var/lib/nixfleet-agent-privileged/results",
        # guard-rails (tests/nix/test_guard_options.py): on by default, root checks /boot and the store
        "preflight": {"enable": True, "boot_paths": ["/boot"], "store_path": "/nix/store", "boot_kernel_factor": 2,
                      "boot_min_free": 64 << 20, "store_min_free": 1 << 30, "switch_inhibitors": True},
        "health": {"enable": True, "grace_period": 120, "units": [], "no_failed_units": True,
                   "ignore_failed_units": [], "http": [], "tcp": [], "commands": [], "require_reconnect": True,
                   "on_failure": "rollback", "allow_remote": False},
        "privileged_timeout": 7200,
    }


def test_settings_override_options(tmp_path: Path) -> None:
    value = eval_json("nixos-good.nix", "config.services.nixfleet-agent.settings",
                      "--arg", "settings", settings(interval=30, settings={"interval": 60, "git_timeout": 900}))
    assert isinstance(value, dict)
    assert value["interval"] == 60 and value["git_timeout"] == 900


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": None}, "services.nixfleet-agent.url must be set"),
        ({"tokenFile": None}, "services.nixfleet-agent.tokenFile must be set"),
        ({"repoUrl": None}, "set services.nixfleet-agent.repoUrl to the Git URL"),
        ({"configRepo": "/srv/nixcfg"}, "set only one of services.nixfleet-agent.repoUrl and"),
        ({"tokenFile": "/nix/store/0000000000000000000000000000000a-token"},
         "services.nixfleet-agent.tokenFile is inside the Nix store"),
        ({"sshKeyFile": "/nix/store/0000000000000000000000000000000a-key"},
         "services.nixfleet-agent.sshKeyFile is inside the Nix store"),
        ({"hostname": "web 1"}, "services.nixfleet-agent.hostname must be 1-63 characters"),
        ({"hostname": ".."}, "services.nixfleet-agent.hostname must be 1-63 characters"),  # issue 13: one rule
        ({"settings": {"token": "secret"}}, "services.nixfleet-agent.settings.token would put the token"),
        ({"settings": {"repo_dir": "/srv/clone"}}, "settings.repo_dir and .state_dir cannot be set on NixOS"),
        ({"settings": {"state_dir": "/srv/state"}}, "settings.repo_dir and .state_dir cannot be set on NixOS"),
        ({"repoUrl": None, "configRepo": "/srv/nixcfg"},
         "services.nixfleet-agent.configRepoUser must name the owner of configRepo /srv/nixcfg"),
        ({"configRepoUser": "alice"}, "services.nixfleet-agent.configRepoUser only applies with configRepo"),
    ],
    ids=["no-url", "no-token", "no-repo", "both-repos", "token-in-store", "key-in-store", "bad-hostname", "dotdot-hostname",
         "token-in-settings", "repo-dir", "state-dir", "legacy-without-user", "user-without-legacy"],
)
def test_each_assertion_fires(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    proc = run("nixos", "nixos-good.nix", tmp_path, "--arg", "settings", settings(**overrides))
    assert proc.returncode != 0
    assert "Failed assertions" in proc.stdout and message in proc.stdout, proc.stdout


def test_config_repo_runs_the_agent_as_the_checkouts_owner(tmp_path: Path) -> None:
    proc = run("nixos", "nixos-good.nix", tmp_path, "--arg", "settings",
               settings(repoUrl=None, configRepo="/home/alice/nixcfg", configRepoUser="alice"))
    assert proc.returncode == 0, proc.stdout
    assert "services.nixfleet-agent.configRepo is deprecated" in proc.stdout
    agent = unit(tmp_path, "nixfleet-agent.service")["Service"]
    assert agent["User"] == ["alice"] and agent["DynamicUser"] == ["false"]
    assert agent["ProtectHome"] == ["tmpfs"] and agent["BindPaths"] == ["/home/alice/nixcfg"]
    assert agent["RemoveIPC"] == ["false"]  # a real user's sessions keep their IPC objects
    assert agent["ReadWritePaths"] == ["/home/alice/nixcfg"]
    privileged = unit(tmp_path, "nixfleet-agent-privileged.service")["Service"]
    # the real user's state is the plain directory; root reads config_repo from the config file
    assert "--request /var/lib/nixfleet-agent/privileged/request.json " in privileged["ExecStart"][0]
    text = eval_json("nixos-good.nix", 'config.systemd.units."nixfleet-agent-privileged.path".text', "--arg",
                     "settings", settings(repoUrl=None, configRepo="/home/alice/nixcfg", configRepoUser="alice"))
    assert isinstance(text, str)
    assert parse_unit(text)["Path"]["PathExists"] == ["/var/lib/nixfleet-agent/privileged/request.json"]


def test_signers_are_passed_to_the_root_unit(tmp_path: Path) -> None:
    proc = run("nixos", "nixos-good.nix", tmp_path, "--arg", "settings",
               settings(privileged={"allowedSignersFile": "/etc/nixfleet/allowed_signers",
                                    "openpgpKeysFile": "/etc/nixfleet/signers.asc", "keepResults": 5}))
    assert proc.returncode == 0, proc.stdout
    service = unit(tmp_path, "nixfleet-agent-privileged.service")["Service"]
    argv = service["ExecStart"][0].split(" ")
    options = dict(zip(argv[1::2], argv[2::2]))
    assert options["--allowed-signers"] == "/etc/nixfleet/allowed_signers"
    assert options["--openpgp-keys"] == "/etc/nixfleet/signers.asc"
    assert options["--keep"] == "5"
    assert any("-gnupg-" in entry for env in service["Environment"] for entry in env.split(":"))


def test_bad_option_value_is_a_type_error(tmp_path: Path) -> None:
    proc = run("nixos", "nixos-good.nix", tmp_path, "--arg", "settings", settings(interval=0))
    assert proc.returncode != 0
    assert "services.nixfleet-agent.interval" in proc.stdout and "is not of type" in proc.stdout


def test_agent_input_option_agrees_with_the_agent() -> None:
    """The module's agentInput default, the agent's built-in agent_input default and the README's
    input name are one name, so a README follower's bump-flake finds its input."""
    from nixfleet_agent.config import DEFAULT_AGENT_INPUT

    default = eval_json("nixos-good.nix", "config.services.nixfleet-agent.settings")
    upstream = eval_json("nixos-good.nix", "config.services.nixfleet-agent.settings",
                         "--arg", "settings", settings(agentInput="nixfleet"))
    assert isinstance(default, dict) and isinstance(upstream, dict)
    assert default["agent_input"] == DEFAULT_AGENT_INPUT == "nixfleet-agent"
    assert upstream["agent_input"] == "nixfleet"


def test_agent_input_must_be_a_flake_input_name(tmp_path: Path) -> None:
    proc = run("nixos", "nixos-good.nix", tmp_path, "--arg", "settings", settings(agentInput="github:x/y"))
    assert proc.returncode != 0
    assert "services.nixfleet-agent.agentInput" in proc.stdout and "is not of type" in proc.stdout

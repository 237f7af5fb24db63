"""The root side's health gate (health/gate.py) with stand-in generations that are real profile
symlink trees: a failing check rolls the host back and remembers the commit, which is then refused
until a newer commit or ``force``; a missing confirmation rolls back although no agent ever
answers; a confirmation that is not this request's agent's is not one."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from health_support import Generations
from root_support import ID, Host, commit

GRACE = 5  # the smallest grace period the settings accept


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("SHIM_CALLS", "")
    return Host(tmp_path)


def configure(host: Host, gens: Generations, *, reconnect: bool = False, extra: str = "") -> None:
    config = host.tmp / "agent.toml"
    config.write_text(f"[health]\nenable = true\ngrace_period = {GRACE}\nno_failed_units = false\n"
                      f"require_reconnect = {str(reconnect).lower()}\n{extra}{gens.healthy_check()}")
    config.chmod(0o644)
    host.extra = ["--config", str(config), "--nix-env", str(gens.nix_env), "--system-profile", str(gens.profile),
                  "--current-system", str(gens.current_link),
                  "--health-interval", "0.2"]


def run(host: Host, gens: Generations, state: str, request_id: str, commit_id: str = "", **env: int) -> int:
    gens.env(state, **env)
    host.write(host.good(id=request_id, **({"commit": commit_id} if commit_id else {})))
    os.environ["SHIM_CALLS"] = str(host.calls)
    from nixfleet_agent.root import main as root_main
    return root_main.main(host.argv())


def push(host: Host, text: str) -> str:
    return commit(host.origin, {"README": text}, text)


def test_failing_check_rolls_back_and_the_commit_is_refused_until_newer_or_force(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens)
    before = gens.current()

    assert run(host, gens, "bad", "sw-1") == 1
    result = host.result("sw-1")
    assert result["health"] == "failed" and result["rolled_back"] is True
    assert result["rolled_back_to"] == before
    assert any(c.startswith("command /bin/sh -c grep") for c in result["failed_checks"])
    assert "rolled back to the previous generation" in result["error"]
    assert gens.current() == before and gens.running() == "good gen1"  # the old generation active again
    # the agent unit is not restarted by activation: root restarts it, so it runs the old config
    assert host.shim_calls()[-1] == "try-restart --no-block nixfleet-agent.service"
    assert [e["commit"] for e in result["bad_commits"]] == [host.commit]
    log = host.log("sw-1")
    assert "health: FAIL command" in log and "health: rolled back" in log

    # the same commit again: refused before anything is built
    calls = len(host.builds())
    assert run(host, gens, "bad", "sw-2") == 1
    refused = host.result("sw-2")
    assert refused["exit_code"] == 2 and refused["error"].startswith(f"bad_commit: commit {host.commit} failed")
    assert "force" in refused["error"] and len(host.builds()) == calls

    # force: built and checked again (now good): kept, and off the list
    gens.env("good")
    host.write({**host.good(id="sw-3"), "force": True})
    from nixfleet_agent.root import main as root_main
    assert root_main.main(host.argv()) == 0
    forced = host.result("sw-3")
    assert forced["health"] == "passed" and forced["bad_commits"] == [] and gens.running().startswith("good")

    # a newer commit is not on the list: it switches (and a bad one is rolled back again)
    newer = push(host, "newer")
    assert run(host, gens, "good", "sw-4", newer) == 0
    assert host.result("sw-4")["health"] == "passed"


def test_a_newer_commit_switches_although_an_older_one_is_bad(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens)
    assert run(host, gens, "bad", "b-1") == 1
    newer = push(host, "fix")
    assert run(host, gens, "good", "b-2", newer) == 0
    assert host.result("b-2")["health"] == "passed" and gens.running().startswith("good gen")
    assert [e["commit"] for e in host.result("b-2")["bad_commits"]] == [host.commit]  # still remembered


def test_no_confirmation_rolls_back_although_the_agent_never_comes_back(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens, reconnect=True)
    before = gens.current()
    started = time.monotonic()
    assert run(host, gens, "good", "nc-1") == 1
    waited = time.monotonic() - started
    result = host.result("nc-1")
    assert result["rolled_back"] is True and gens.current() == before and gens.running() == "good gen1"
    assert any(c.startswith("reconnect: the agent did not register") for c in result["failed_checks"])
    assert waited >= GRACE  # root waited the grace period, no shorter
    marker = json.loads((host.out / "nc-1" / "health.json").read_text())
    assert marker["state"] == "failed"


def _confirm_when_asked(host: Host, request_id: str, text: str, done: threading.Event) -> None:
    marker = host.out / request_id / "health.json"
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    confirm = host.request_dir / "confirm.json"
    tmp = host.request_dir / ".confirm.tmp"
    tmp.write_text(text)
    tmp.rename(confirm)
    done.set()


def test_the_agents_confirmation_keeps_the_new_generation(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens, reconnect=True)
    done = threading.Event()
    agent = threading.Thread(target=_confirm_when_asked, args=(host, "ok-1", json.dumps({"id": "ok-1"}), done))
    agent.start()
    assert run(host, gens, "good", "ok-1") == 0
    agent.join()
    result = host.result("ok-1")
    assert result["health"] == "passed" and result["rolled_back"] is False
    assert gens.running() == "good gen2" and not (host.request_dir / "confirm.json").exists()
    assert "the agent registered again" in host.log("ok-1")


@pytest.mark.parametrize("text", [json.dumps({"id": "another-request"}), json.dumps({"id": "cf-1", "keep": "new"}),
                                  "not json"])
def test_a_confirmation_for_something_else_is_no_confirmation(host: Host, text: str) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens, reconnect=True)
    done = threading.Event()
    agent = threading.Thread(target=_confirm_when_asked, args=(host, "cf-1", text, done))
    agent.start()
    assert run(host, gens, "good", "cf-1") == 1
    agent.join()
    assert host.result("cf-1")["rolled_back"] is True and gens.running() == "good gen1"


def test_a_symlinked_confirmation_is_not_followed(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens, reconnect=True)
    elsewhere = host.tmp / "elsewhere.json"
    elsewhere.write_text(json.dumps({"id": "ln-1"}))

    def link() -> None:
        marker = host.out / "ln-1" / "health.json"
        while not marker.exists():
            time.sleep(0.05)
        (host.request_dir / "confirm.json").symlink_to(elsewhere)

    agent = threading.Thread(target=link)
    agent.start()
    assert run(host, gens, "good", "ln-1") == 1
    agent.join()
    assert host.result("ln-1")["rolled_back"] is True and elsewhere.exists()


def test_failed_activation_rolls_back_without_waiting(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens)
    before = gens.current()
    assert run(host, gens, "good", "act-1", activate_exit=4) == 1
    result = host.result("act-1")
    assert result["exit_code"] == 4
    assert result["failed_checks"] == ["activation: nixos-rebuild exited 4"]
    assert result["rolled_back"] is True and gens.current() == before and gens.running() == "good gen1"


def test_a_failed_build_changes_nothing_and_is_not_remembered(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens)
    before = gens.current()
    assert run(host, gens, "good", "bf-1", build_exit=1) == 1
    result = host.result("bf-1")
    assert result["health"] == "skipped" and result["rolled_back"] is False and "bad_commits" not in result
    assert gens.current() == before and [c for c in host.shim_calls() if c.startswith("nix-env")] == []


def test_report_mode_stays_on_the_new_generation(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens, extra='on_failure = "report"\n')
    assert run(host, gens, "bad", "rp-1") == 1
    result = host.result("rp-1")
    assert result["health"] == "failed" and result["rolled_back"] is False and result["bad_commits"] == []
    assert gens.running() == "bad gen2" and "not rolled back" in result["error"]


def test_without_a_health_table_nothing_changes(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    gens.env("bad")
    host.extra = ["--nix-env", str(gens.nix_env), "--system-profile", str(gens.profile)]
    host.write(host.good())
    assert host.run() == 0
    assert "health" not in host.result(ID) and gens.running() == "bad gen2"


def test_a_bad_health_table_is_one_clear_line(host: Host) -> None:
    gens = Generations(host.tmp, host.bin)
    configure(host, gens, extra='[[health.http]]\nurl = "http://192.0.2.1/"\n')
    host.write(host.good())
    from nixfleet_agent.root import main as root_main
    assert root_main.main(host.argv()) == 2
    assert "health.http: 192.0.2.1 is not a loopback address" in host.rejected()["error"]


def test_force_is_a_boolean_and_only_for_switch() -> None:
    from nixfleet_agent.root.request import RequestError, parse_request

    base = {"id": "f-1", "commit": "a" * 40, "flake_attr": "web1"}
    assert parse_request(json.dumps({**base, "action": "switch", "force": True}).encode()).force is True
    for doc, field in (({**base, "action": "switch", "force": "yes"}, "force"),
                       ({**base, "action": "rollback", "force": True}, "force")):
        with pytest.raises(RequestError) as err:
            parse_request(json.dumps(doc).encode())
        assert err.value.field == field

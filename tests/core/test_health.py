"""Health checks with real parts: an HTTP server and a TCP listener on loopback, real commands
(as another user when root), a recording stand-in systemctl; the settings' one-line problems; the
bad-commit list read as hostile input; the agent's confirmation thread; Home Manager generations
picked by number past 10 with real profile symlink trees."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixfleet_agent.commands import rebuild
from nixfleet_agent.health import badlist, checks, confirm, settings
from nixfleet_agent.health.checks import Runner


def parse(**table: object) -> settings.HealthSettings:
    got = settings.parse({"no_failed_units": False, **table})
    assert not got.problems, got.problems
    return got


# ----- settings ---------------------------------------------------------------------------------------

def test_no_table_is_disabled_and_an_empty_table_has_the_documented_defaults() -> None:
    assert settings.parse(None).enable is False
    got = settings.parse({})
    assert (got.enable, got.grace_period, got.no_failed_units, got.require_reconnect, got.on_failure) == (
        True, 120, True, True, "rollback")


@pytest.mark.parametrize("table,problem", [
    ({"grace_period": 1}, "health.grace_period: must be an integer number of seconds in 5-3600 (got 1)"),
    ({"on_failure": "pray"}, "health.on_failure: must be one of rollback, report (got 'pray')"),
    ({"http": [{"url": "http://192.0.2.7/"}]}, "health.http: 192.0.2.7 is not a loopback address"),
    ({"tcp": ["example.com:22"]}, "health.tcp: example.com is not a loopback address"),
    ({"tcp": ["127.0.0.1:99999"]}, "health.tcp: not host:port (got '127.0.0.1:99999')"),
    ({"commands": [{"argv": ["true"]}]}, "health.commands: the program must be an absolute path (got 'true')"),
    ({"units": ["--all"]}, "health.units: not a unit name (got '--all')"),
    ({"enable": "yes"}, "health.enable: must be true or false (got 'yes')"),
    ({"colour": 1}, "health.colour: unknown setting"),
])
def test_bad_settings_are_one_line_naming_the_key(table: dict[str, object], problem: str) -> None:
    problems = settings.parse(table).problems
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_remote_checks_need_allow_remote() -> None:
    got = settings.parse({"allow_remote": True, "tcp": ["192.0.2.7:443"], "http": [{"url": "https://[2001:db8::1]/"}]})
    assert not got.problems and got.tcp[0].address == "192.0.2.7:443" and got.http[0].url.startswith("https://")
    assert settings.parse({"tcp": ["[::1]:22"]}).tcp[0].address == "[::1]:22"


# ----- the kinds, passing and failing ----------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        code = {"/ok": 200, "/teapot": 418, "/moved": 302}.get(self.path, 500)
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/ok")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def one(runner: Runner, timeout: float = 5) -> list[checks.Outcome]:
    return [check(timeout) for check in runner.checks()]


def test_http_check(web: int) -> None:
    base = f"http://127.0.0.1:{web}"
    got = one(Runner(parse(http=[{"url": f"{base}/ok"}, {"url": f"{base}/teapot", "status": 418},
                                  {"url": f"{base}/broken"}, {"url": f"{base}/moved"}])))
    assert [o.ok for o in got] == [True, True, False, False]
    assert got[2].detail == "status 500, expected 200" and got[3].detail == "status 302, expected 200"  # no redirect


def test_http_check_without_a_server() -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    [got] = one(Runner(parse(http=[{"url": f"http://127.0.0.1:{port}/"}])))
    assert not got.ok and got.detail.startswith("no answer")


def test_tcp_check() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    [up] = one(Runner(parse(tcp=[f"127.0.0.1:{port}"])))
    listener.close()
    [down] = one(Runner(parse(tcp=[f"127.0.0.1:{port}"])))
    assert up.ok and up.detail == "connected"
    assert not down.ok and down.detail.startswith("cannot connect")


def test_command_check(tmp_path: Path) -> None:
    script = tmp_path / "probe"
    script.write_text("#!/bin/sh\necho \"database says no\" >&2\nexit 3\n")
    script.chmod(0o755)
    got = one(Runner(parse(commands=[{"argv": ["/bin/sh", "-c", "exit 0"]}, {"argv": [str(script)]},
                                     {"argv": [str(tmp_path / "missing")]}])))
    assert [o.ok for o in got] == [True, False, False]
    assert got[1].detail == "exit 3: database says no" and got[2].detail.startswith("cannot run")


def test_command_check_as_another_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a check as another user")
    import pwd

    nobody = pwd.getpwnam("nobody")
    [got] = one(Runner(parse(commands=[{"argv": ["/bin/sh", "-c", f"test $(id -u) = {nobody.pw_uid}"],
                                        "user": "nobody"}])))
    assert got.ok, got
    [refused] = one(Runner(parse(commands=[{"argv": ["/bin/true"], "user": "nobody"}]), as_root=False))
    assert not refused.ok and refused.detail.startswith("cannot run as nobody")


SYSTEMCTL = """#!/bin/sh
printf '%s\\n' "$*" >> {calls}
case "$1 $2" in
  "--user is-active") shift ;;
esac
if [ "$1" = is-active ]; then
  state=$(cat {states}/"$3" 2>/dev/null || echo inactive)
  echo "$state"; [ "$state" = active ]; exit $?
fi
cat {failed}
"""


@pytest.fixture
def systemctl(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    states, failed, calls = tmp_path / "states", tmp_path / "failed", tmp_path / "calls"
    states.mkdir()
    failed.write_text("")
    prog = tmp_path / "systemctl"
    prog.write_text(SYSTEMCTL.format(calls=calls, states=states, failed=failed))
    prog.chmod(0o755)
    return prog, states, failed, calls


def test_unit_checks_with_the_command_lines_in_one_place(systemctl: tuple[Path, Path, Path, Path]) -> None:
    prog, states, failed, calls = systemctl
    (states / "web.service").write_text("active")
    failed.write_text("nginx.service loaded failed failed nginx\nfoo.timer loaded failed failed foo\n")
    runner = Runner(parse(units=["web.service", "db.service"], no_failed_units=True,
                          ignore_failed_units=["foo.timer"]), systemctl=str(prog))
    got = one(runner)
    assert [(o.name, o.ok, o.detail) for o in got] == [
        ("unit web.service", True, "active"), ("unit db.service", False, "inactive"),
        ("no failed units", False, "failed: nginx.service")]
    assert calls.read_text().splitlines() == [
        "is-active -- web.service", "is-active -- db.service",
        "list-units --failed --plain --no-legend --no-pager"]
    failed.write_text("foo.timer loaded failed failed foo\n")
    assert one(Runner(parse(no_failed_units=True, ignore_failed_units=["foo.timer"]), systemctl=str(prog)))[0].ok
    assert checks.is_active_argv("systemctl", "x.service", user=True)[:3] == ["systemctl", "--user", "is-active"]


# ----- the loop ----------------------------------------------------------------------------------------

def test_all_pass_needs_stable_rounds_and_lines_only_on_change(tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    flag.write_text("")
    lines: list[str] = []
    report = Runner(parse(commands=[{"argv": ["/bin/sh", "-c", f"test -e {flag}"]}])).run(
        time.monotonic() + 30, lines.append, interval=0.05)
    assert report.healthy and report.rounds == checks.STABLE_ROUNDS
    assert [line for line in lines if line.startswith("health: ok")] == [lines[1]]  # one line, not one per round


def test_a_check_that_flaps_is_not_healthy(tmp_path: Path) -> None:
    """Active at the first look, failed at the next: a crash right after start is caught."""
    count = tmp_path / "count"
    probe = f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}; [ $((n % 2)) = 0 ]"
    lines: list[str] = []
    report = Runner(parse(commands=[{"argv": ["/bin/sh", "-c", probe]}])).run(time.monotonic() + 1.5,
                                                                            lines.append, interval=0.05)
    assert not report.healthy and report.rounds > 2
    assert sum(line.startswith("health: FAIL") for line in lines) >= 1


def test_the_grace_period_bounds_the_loop_without_spinning() -> None:
    started = time.monotonic()
    report = Runner(parse(commands=[{"argv": ["/bin/false"]}])).run(started + 1.0, lambda _: None, interval=0.25)
    assert not report.healthy and report.failed[0].name == "command /bin/false"
    # rounds are an interval apart: a busy loop would make hundreds in a second
    assert report.rounds <= (time.monotonic() - started) / 0.25 + 2


def test_a_slow_probe_is_cut_at_the_deadline(tmp_path: Path) -> None:
    report = Runner(parse(commands=[{"argv": ["/bin/sleep", "30"]}])).run(time.monotonic() + 1.0, lambda _: None)
    assert not report.healthy and report.failed[0].detail.startswith("timed out")


# ----- the bad list ------------------------------------------------------------------------------------

C1, C2 = "a" * 40, "b" * 40


def test_bad_list_round_trip_and_private(tmp_path: Path) -> None:
    bad = badlist.BadList(tmp_path / "health" / "bad.json")
    assert bad.load() == [] and bad.problem == ""
    bad.add(C1, "2026-01-01T00:00:00Z", "unit x: failed")
    bad.add(C2, "2026-01-02T00:00:00Z", "reconnect")
    assert [e.commit for e in bad.load()] == [C1, C2] and bad.find(C2) is not None
    assert oct(bad.path.stat().st_mode & 0o777) == "0o600"
    assert [e.commit for e in bad.remove(C1)] == [C2]
    assert "push a newer commit, or switch with force" in badlist.refusal_text(bad.load()[0])


@pytest.mark.parametrize("content", ["{", json.dumps({"version": 2, "commits": []}),
                                     json.dumps({"version": 1, "commits": [{"commit": "../x", "at": "", "reason": ""}]}),
                                     "x" * (badlist.MAX_BYTES + 10)])
def test_a_damaged_bad_list_is_empty_and_said(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    path.chmod(0o600)
    bad = badlist.BadList(path)
    assert bad.load() == [] and "damaged" in bad.problem


def test_a_linked_or_shared_bad_list_is_not_read(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"version": 1, "commits": [{"commit": C1, "at": "t", "reason": "r"}]}))
    real.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert badlist.BadList(link).load() == []
    real.chmod(0o666)
    bad = badlist.BadList(real)
    assert bad.load() == [] and "not a private regular file" in bad.problem


# ----- the agent's confirmation -------------------------------------------------------------------------

class _Op:
    def __init__(self, tmp: Path) -> None:
        self.id = "op-1"
        self.result_path = str(tmp / "results" / "op-1" / "result.json")
        Path(self.result_path).parent.mkdir(parents=True)


def _marker(op: _Op, **doc: object) -> None:
    Path(op.result_path).with_name("health.json").write_text(json.dumps({"id": op.id, **doc}))


def test_confirmer_reconnects_then_confirms(tmp_path: Path) -> None:
    op = _Op(tmp_path)
    reconnects: list[int] = []

    def reconnect() -> None:
        reconnects.append(1)
        confirm.note_registered()  # the dashboard answers the new register

    c = confirm.Confirmer(op, tmp_path, lambda _: None, reconnect, lambda: (False, ""), lambda: None,  # type: ignore[arg-type]
                          threading.Event()).start()
    time.sleep(0.3)
    assert not confirm.confirm_path(tmp_path).exists()  # nothing before root asks
    _marker(op, state="checking", awaiting_confirmation=True, since=time.time(), grace_period=10)
    c.thread.join(10)
    assert reconnects == [1] and json.loads(confirm.confirm_path(tmp_path).read_text()) == {"id": "op-1"}


def test_confirmer_lets_the_new_agent_confirm_when_its_definition_changed(tmp_path: Path) -> None:
    op = _Op(tmp_path)
    exits: list[int] = []
    _marker(op, state="checking", awaiting_confirmation=True, since=time.time() + 3600, grace_period=10)
    c = confirm.Confirmer(op, tmp_path, lambda _: None, lambda: None, lambda: (True, "definition changed"),  # type: ignore[arg-type]
                          lambda: exits.append(101), threading.Event()).start()
    c.thread.join(10)
    assert exits == [101] and not confirm.confirm_path(tmp_path).exists()


def test_confirmer_writes_nothing_without_a_new_registration(tmp_path: Path) -> None:
    op = _Op(tmp_path)
    _marker(op, state="checking", awaiting_confirmation=True, since=time.time() + 3600, grace_period=1)
    c = confirm.Confirmer(op, tmp_path, lambda _: None, lambda: None, lambda: (False, ""), lambda: None,  # type: ignore[arg-type]
                          threading.Event()).start()
    c.thread.join(10)
    assert not c.thread.is_alive() and not confirm.confirm_path(tmp_path).exists()


# ----- Home Manager generations past 10 -------------------------------------------------------------------

def test_home_manager_previous_generation_is_picked_by_number_past_10(tmp_path: Path) -> None:
    store, profiles = tmp_path / "store", tmp_path / "profiles"
    profiles.mkdir()
    for n in (2, 9, 10, 11):
        gen = store / f"hm-{n}"
        gen.mkdir(parents=True)
        (profiles / f"home-manager-{n}-link").symlink_to(gen)
    (profiles / "home-manager").symlink_to("home-manager-11-link")
    assert sorted(p.name for p in profiles.iterdir())[1:3] == ["home-manager-10-link", "home-manager-11-link"]
    assert rebuild.hm_generations(profiles) == (11, [2, 9, 10, 11])
    assert rebuild.previous_generation(profiles) == 10  # by name, "-9-" would sort last
    (profiles / "home-manager").unlink()
    (profiles / "home-manager").symlink_to("home-manager-10-link")
    assert rebuild.previous_generation(profiles) == 9


def test_units_failed_before_the_switch_are_not_counted(systemctl: tuple[Path, Path, Path, Path]) -> None:
    """A unit that had failed long before must not roll back this switch (and every later one)."""
    prog, _, failed, _ = systemctl
    failed.write_text("old.service loaded failed failed old\n")
    runner = Runner(parse(no_failed_units=True), systemctl=str(prog))
    assert runner.failed_units()[0] == ["old.service"]
    runner.baseline_failed = frozenset(runner.failed_units()[0] or ())
    assert one(runner)[0].ok
    failed.write_text("old.service loaded failed failed old\n● new.service loaded failed failed new\n")
    assert one(runner)[0].detail == "failed: new.service"

"""Session behaviour against the real reference dashboard, with the agent as a real process."""

from __future__ import annotations

import hashlib
import itertools
import signal
import subprocess
import time
from pathlib import Path

from support import TEST_TOKEN

REGISTER_FIELDS = {
    "hostname", "host_type", "agent_version", "os_version", "nixpkgs_version", "generation", "theme_color",
    "heartbeat_interval", "location", "device_type", "repo_url", "repo_dir", "source_commit", "store_path",
    "binary_hash", "implementation", "implementation_version",
}
HEARTBEAT_FIELDS = {
    "generation", "nixpkgs_version", "pending_command", "command_pid", "metrics", "update_status",
    "source_commit", "store_path", "binary_hash", "lock_hash",
    "reboot", "drift",  # issue 16: extra fields the upstream dashboard ignores (docs/visibility.md)
}


def test_register_is_the_first_frame_with_exact_fields(dashboard, start_agent, fleet_repo):
    start_agent(NIXFLEET_THEME_COLOR="#7aa2f7", NIXFLEET_LOCATION="cloud", NIXFLEET_DEVICE_TYPE="server")
    register = dashboard.wait_message("register", timeout=10)
    first = dashboard.messages()[0]
    assert first.type == "register" and first.conn == register.conn
    payload = register.payload
    assert set(payload) == REGISTER_FIELDS
    assert payload["hostname"] == "test-host"
    assert payload["host_type"] == "nixos"
    assert payload["heartbeat_interval"] == 1
    assert (payload["theme_color"], payload["location"], payload["device_type"]) == ("#7aa2f7", "cloud", "server")
    assert payload["repo_url"] == str(fleet_repo)
    head = subprocess.run(["git", "-C", str(fleet_repo), "rev-parse", "--short=7", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert payload["generation"] == head
    assert len(payload["binary_hash"]) == 64 and payload["store_path"]


def test_heartbeats_follow_registration_on_the_interval(dashboard, start_agent, fleet_repo, tmp_path):
    start_agent()
    dashboard.wait_message("register", timeout=10)
    dashboard.wait_for(lambda: len(dashboard.messages("heartbeat")) >= 4, timeout=8)
    beats = dashboard.messages("heartbeat")
    gaps = [b.t - a.t for a, b in itertools.pairwise(beats[1:])]
    assert all(0.3 < gap < 2.5 for gap in gaps), gaps  # cadence, not performance: interval is 1 s
    payload = beats[-1].payload
    assert set(payload) == HEARTBEAT_FIELDS
    assert payload["pending_command"] is None and payload["command_pid"] is None
    assert set(payload["metrics"]) == {"cpu", "ram", "swap", "load"}
    assert all(isinstance(v, float) for v in payload["metrics"].values())
    assert set(payload["update_status"]) == {"git", "lock", "system", "tests"}
    for compartment in payload["update_status"].values():
        assert set(compartment) == {"status", "message", "checked_at"}
    assert payload["update_status"]["lock"]["status"] == "ok"
    clone = tmp_path / "state" / "repo"
    assert payload["lock_hash"] == hashlib.sha256((clone / "flake.lock").read_bytes()).hexdigest()
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert payload["generation"] == head[:7]


def test_first_heartbeat_is_immediate_not_one_interval_later(dashboard, start_agent):
    start_agent(NIXFLEET_INTERVAL="30")
    register = dashboard.wait_message("register", timeout=10)
    dashboard.wait_message("heartbeat", since=register.index, timeout=5)  # the interval is 30 s


def test_generation_survives_packed_refs(dashboard, start_agent, tmp_path):
    start_agent()
    dashboard.wait_message("heartbeat", timeout=10)
    clone = tmp_path / "state" / "repo"
    subprocess.run(["git", "-C", str(clone), "pack-refs", "--all", "--prune"], check=True)
    assert not (clone / ".git" / "refs" / "heads" / "main").exists()
    mark = dashboard.mark()
    beat = dashboard.wait_message("heartbeat", since=mark, timeout=3)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert beat.payload["generation"] == head[:7] != ""


def test_no_heartbeat_before_registered(dashboard, start_agent):
    dashboard.auto_register = False
    start_agent()
    dashboard.wait_message("register", timeout=10)
    mark = dashboard.mark()
    try:
        dashboard.wait_message("heartbeat", timeout=2.5)
    except TimeoutError:
        pass
    else:
        raise AssertionError("agent sent a heartbeat before it was registered")
    dashboard.send("test-host", "registered", {"host_id": "test-host"})
    dashboard.wait_message("heartbeat", since=mark, timeout=2)


def test_reregisters_after_dashboard_restart(dashboard, start_agent):
    start_agent()
    dashboard.wait_message("heartbeat", timeout=10)
    dashboard.restart()
    mark = dashboard.mark()
    register = dashboard.wait_message("register", since=mark, timeout=5)
    assert register.conn > 1
    dashboard.wait_message("heartbeat", since=register.index, timeout=3)


def test_reconnects_after_connection_cut_without_close_frame(dashboard, start_agent):
    agent = start_agent()
    dashboard.wait_message("heartbeat", timeout=10)
    dashboard.drop("test-host")
    mark = dashboard.mark()
    dashboard.wait_message("register", since=mark, timeout=5)
    assert agent.running()


def test_half_open_link_detected_within_ping_deadline(dashboard, start_agent):
    agent = start_agent(NIXFLEET_PING_INTERVAL="1", NIXFLEET_PING_TIMEOUT="3")
    dashboard.wait_message("heartbeat", timeout=10)
    dashboard.freeze("test-host")  # the dashboard stops reading: no pongs, nothing processed
    mark = dashboard.mark()
    agent.wait_event("ping_timeout", timeout=6)
    register = dashboard.wait_message("register", since=mark, timeout=6)
    assert register.conn == 2
    dashboard.wait_message("heartbeat", since=register.index, timeout=3)


def test_answers_dashboard_pings(tmp_path, agent_env, dashboard):
    """The dashboard's own keepalive (it closes links that do not pong) must never fire."""
    from dashboard import Dashboard
    from support import AgentProcess

    pinging = Dashboard(token=TEST_TOKEN, ping_interval=0.3, ping_timeout=1.0).start()
    agent = None
    try:
        env = agent_env(NIXFLEET_URL=pinging.url, NIXFLEET_PING_INTERVAL="60", NIXFLEET_PING_TIMEOUT="120")
        agent = AgentProcess(env)
        pinging.wait_message("heartbeat", timeout=10)
        mark = pinging.mark()
        pinging.wait_for(lambda: len(pinging.messages("heartbeat", since=mark)) >= 3, timeout=6)
        assert [r.conn for r in pinging.messages()] == [1] * len(pinging.messages())
    finally:
        if agent:
            agent.stop()
        pinging.close()


def test_sigterm_closes_with_1000_shutdown_and_exits_0(dashboard, start_agent):
    agent = start_agent()
    dashboard.wait_message("heartbeat", timeout=10)
    assert agent.stop(sig=signal.SIGTERM) == 0
    dashboard.wait_for(lambda: dashboard.closes, timeout=3)
    assert dashboard.closes[-1][1:] == (1000, "shutdown")


def test_401_is_logged_once_and_backs_off(dashboard, start_agent):
    agent = start_agent(token="wrong-token", NIXFLEET_BACKOFF_MAX="2")
    dashboard.wait_for(lambda: len(dashboard.attempts) >= 1, timeout=10)
    start = dashboard.attempts[0][0]
    time.sleep(5)  # observation window: count connection attempts in it
    in_window = [t for t, status in dashboard.attempts if t - start <= 5.0]
    assert all(status == 401 for _, status in dashboard.attempts)
    # with the maximum backoff of 2 s (jittered in [1, 2]) at most 6 attempts fit in 5 s; hammering would be dozens
    assert 2 <= len(in_window) <= 6, len(in_window)
    assert not dashboard.messages("register")
    errors = [e for e in agent.events("auth_failed") if e["level"] == "error"]
    assert len(errors) == 1 and errors[0]["status"] == "401"
    assert agent.running()


def test_auth_recovers_when_token_accepted_again(dashboard, start_agent):
    dashboard.reject_status = 403
    agent = start_agent(NIXFLEET_BACKOFF_MAX="1")
    agent.wait_event("auth_failed", timeout=10)
    dashboard.reject_status = None
    dashboard.wait_message("register", timeout=5)
    agent.wait_event("auth_recovered", timeout=2)


def test_token_never_in_logs_argv_or_messages(dashboard, start_agent, tmp_path):
    secret = TEST_TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(f"NIXFLEET_TOKEN={secret}\n")
    token_file.chmod(0o600)
    agent = start_agent(token=None, NIXFLEET_TOKEN_FILE=str(token_file), NIXFLEET_LOG_LEVEL="debug")
    dashboard.wait_message("heartbeat", timeout=10)
    dashboard.reject_status = 401
    dashboard.drop("test-host")
    agent.wait_event("auth_failed", timeout=8)
    cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().decode(errors="replace")
    environ_file = Path(f"/proc/{agent.pid}/environ").read_bytes().decode(errors="replace")
    agent.stop()
    assert secret not in agent.log()
    assert secret not in cmdline
    assert secret not in environ_file  # read from the file, not passed through the environment
    assert all(secret not in record.raw for record in dashboard.messages())


def test_messages_after_dashboard_closes_normally(dashboard, start_agent):
    """A 1000 close from the dashboard (e.g. host replaced) is followed by a clean re-registration."""
    start_agent()
    dashboard.wait_message("heartbeat", timeout=10)
    mark = dashboard.mark()
    dashboard.close_conn("test-host", 1000, "bye")
    dashboard.wait_message("register", since=mark, timeout=5)


def test_handshake_timeout_against_a_silent_server(start_agent, agent_env):
    """A server that accepts TCP but never answers the upgrade must not hang the agent."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    try:
        url = f"ws://127.0.0.1:{server.getsockname()[1]}/ws"
        agent = start_agent(env=agent_env(NIXFLEET_URL=url, NIXFLEET_HANDSHAKE_TIMEOUT="1", NIXFLEET_BACKOFF_MAX="1"))
        server.settimeout(10)
        accepted.append(server.accept()[0])
        failures = agent.wait_event("connect_failed", timeout=5)
        assert "timed out" in failures[0]["error"].lower()
        accepted.append(server.accept()[0])  # and it tries again
    finally:
        for conn in accepted:
            conn.close()
        server.close()

"""What may leave the agent: never the token to a host a redirect names, never a credential in a
frame, a log line, a state file or ``check``'s output (poison values), and no handshake that a
trickling server can stretch for ever (issue 12)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from dashboard import Dashboard
from support import TEST_HOST, agent_env, free_port, run_cli, wait_for


class RawServer:
    """Accepts TCP connections and answers each with ``respond(conn)`` (in its own thread)."""

    def __init__(self, respond) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.respond = respond
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        try:
            conn.settimeout(10)
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data)
            self.respond(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass


@pytest.fixture
def redirect_pair():
    target = RawServer(lambda conn: conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))

    def redirect(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 301 Moved Permanently\r\nLocation: {target.url}\r\nContent-Length: 0\r\n\r\n".encode())
        conn.close()

    source = RawServer(redirect)
    yield source, target
    source.close()
    target.close()


def test_redirect_is_never_followed_with_the_token(redirect_pair, start_agent, agent_env):
    source, target = redirect_pair
    agent = start_agent(agent_env(NIXFLEET_URL=source.url, NIXFLEET_BACKOFF_MAX="1"))
    failures = agent.wait_event("connect_failed", timeout=15)
    assert f"redirect to {target.url} refused" in failures[0]["error"]
    wait_for(lambda: len(source.requests) >= 2, 15, "a second dial of the configured URL")
    assert target.requests == []  # the named host never saw the agent, let alone the token


def test_check_refuses_a_redirect_and_names_it(redirect_pair, agent_env):
    source, target = redirect_pair
    result = run_cli(["check"], agent_env(NIXFLEET_URL=source.url))
    assert result.returncode == 1
    assert f"redirect to {target.url} refused" in result.stdout
    assert target.requests == []


def test_a_trickling_server_cannot_stretch_the_handshake(start_agent, agent_env):
    """websocket-client's timeout is per recv and it reads headers a byte per recv: before, a
    server sending one byte a second held the agent in its handshake for ever."""
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Slow: " + b"a" * 10_000:
            if stop.is_set():
                return
            conn.sendall(bytes([byte]))
            time.sleep(0.2)

    server = RawServer(trickle)
    try:
        agent = start_agent(agent_env(NIXFLEET_URL=server.url, NIXFLEET_HANDSHAKE_TIMEOUT="2"))
        failures = agent.wait_event("connect_failed", timeout=20)
        assert "handshake timed out (not complete within 2 s)" in failures[0]["error"]
    finally:
        stop.set()
        server.close()


POISON_TOKEN = "poison-token-5a1b7e"
POISON_REPO = "poison-repo-pw-93c2"
POISON_DASH = "poison-dash-pw-d81f"


def test_poison_values_never_leave_the_process(tmp_path, start_agent):
    """Token, repo credential and dashboard-URL password appear in no frame, log line, state file
    or check output; register.repo_url carries no userinfo at all."""
    with Dashboard(token=POISON_TOKEN) as dash:
        dead = free_port()  # the repository host is unreachable: errors that might quote the URL
        repo_url = f"https://fleet-bot:{POISON_REPO}@127.0.0.1:{dead}/fleet.git"
        url = f"ws://dash-user:{POISON_DASH}@127.0.0.1:{dash.port}/ws"
        state = tmp_path / "state"
        token_file = tmp_path / "token"
        token_file.write_text(POISON_TOKEN + "\n")
        token_file.chmod(0o600)
        env = agent_env(url, state, token=None, NIXFLEET_TOKEN_FILE=str(token_file), NIXFLEET_REPO_URL=repo_url,
                        NIXFLEET_REPO_DIR=str(tmp_path / "clone"))
        agent = start_agent(env)
        register = dash.wait_message("register", timeout=15)
        assert register.payload["repo_url"] == f"https://127.0.0.1:{dead}/fleet.git"
        dash.wait_message("heartbeat", timeout=15)
        dash.send_command(TEST_HOST, "pull")
        dash.wait_message("status", where=lambda r: r.payload["command"] == "pull", timeout=60)
        check = run_cli(["check"], env)
        agent.stop()
        files = [p for p in state.rglob("*") if p.is_file()]
        assert any(p.name == "state.json" for p in files)
        texts = {"check": check.stdout + check.stderr, "log": agent.log()}
        texts.update({f"frame {r.index}": r.raw for r in dash.messages()})
        texts.update({str(p): p.read_text(errors="replace") for p in files})
        for poison in (POISON_TOKEN, POISON_REPO, POISON_DASH):
            leaks = [where for where, text in texts.items() if poison in text]
            assert leaks == [], f"{poison} leaked into {leaks}"
        assert "dash-user" not in texts["log"] and "dash-user" not in texts["check"]


def test_state_json_only_ever_holds_redacted_text(tmp_path):
    """Before: a status message was persisted to state.json before it was redacted."""
    from nixfleet_agent.link.outbox import Outbox
    from nixfleet_agent.reporter import Reporter
    from nixfleet_agent.host.status import StatusStore

    store = StatusStore(tmp_path)
    reporter = Reporter(Outbox(100), store)
    reporter.status("pull", "error", 1, f"fatal: unable to access 'https://bot:{POISON_REPO}@git.example/f.git'")
    store.set("git", "error", f"Repository unavailable: https://{POISON_REPO}@git.example/f.git")
    text = (tmp_path / "state.json").read_text()
    assert POISON_REPO not in text
    assert "https://***@git.example/f.git" in text

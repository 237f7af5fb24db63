"""The reference dashboard as a program (used by the demo and the NixOS VM tests)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from support import TEST_TOKEN, AgentProcess, agent_env, free_port, wait_for

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboard.py"


def api(port: int, path: str, token: str | None = TEST_TOKEN):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_cli_dashboard_drives_an_agent(tmp_path, fleet_repo):
    port = free_port()
    token_file = tmp_path / "dash-token"
    token_file.write_text(f"NIXFLEET_TOKEN={TEST_TOKEN}\n")
    server = subprocess.Popen([sys.executable, str(DASHBOARD), "--port", str(port), "--token-file", str(token_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    agent = None
    try:
        wait_for(lambda: api(port, "/health", None)[0] == 200 if _listening(port) else None, 10, "dashboard up")
        assert api(port, "/api/hosts", token="wrong")[0] == 401
        agent = AgentProcess(agent_env(f"ws://127.0.0.1:{port}/ws", tmp_path / "state", NIXFLEET_REPO_URL=str(fleet_repo)))
        wait_for(lambda: api(port, "/api/hosts")[1].get("test-host", {}).get("connected"), 10, "agent registered")
        status, body = api(port, "/api/command?host=test-host&command=refresh-git")
        assert (status, body) == (200, {"sent": True})
        done = wait_for(lambda: api(port, "/api/messages?host=test-host&type=status")[1], 10, "status recorded")
        assert done[0]["payload"]["command"] == "refresh-git" and done[0]["payload"]["exit_code"] == 0
        assert api(port, "/api/command?host=nobody&command=pull")[0] == 404
    finally:
        if agent:
            agent.stop()
        server.terminate()
        out, _ = server.communicate(timeout=10)
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["type"] == "register" and any(m["type"] == "status" for m in lines)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_cli_dashboard_bad_token_file_is_one_line(tmp_path):
    for name, content in (("missing", None), ("empty", "NIXFLEET_TOKEN=\n")):
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        proc = subprocess.run([sys.executable, str(DASHBOARD), "--token-file", str(path)], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"--token-file {path}: " in proc.stderr.strip().splitlines()[-1]


def test_cli_dashboard_without_websockets_names_dev_dashboard(tmp_path):
    # -S: no site-packages, like Debian's python3 where websockets lives only in dev/test's venv
    proc = subprocess.run([sys.executable, "-S", str(DASHBOARD), "--token-file", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "'websockets' is not installed" in proc.stderr and "./dev/dashboard" in proc.stderr

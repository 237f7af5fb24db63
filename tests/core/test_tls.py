"""wss:// with a private CA file: verified connection; without the CA the agent refuses and retries."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest
from dashboard import Dashboard
from support import TEST_TOKEN, AgentProcess

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")


@pytest.fixture
def tls_dashboard(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    dash = Dashboard(token=TEST_TOKEN, ssl_context=context).start()
    yield dash, cert
    dash.close()


def test_wss_with_ca_file_registers(tls_dashboard, agent_env):
    dash, cert = tls_dashboard
    assert dash.url.startswith("wss://")
    agent = AgentProcess(agent_env(NIXFLEET_URL=dash.url, NIXFLEET_CA_FILE=str(cert)))
    try:
        dash.wait_message("heartbeat", timeout=10)
    finally:
        agent.stop()


def test_wss_without_trusted_ca_never_connects(tls_dashboard, agent_env):
    dash, _ = tls_dashboard
    agent = AgentProcess(agent_env(NIXFLEET_URL=dash.url, NIXFLEET_BACKOFF_MAX="1"))
    try:
        failures = agent.wait_event("connect_failed", timeout=10)
        assert "TLS" in failures[0]["error"] or "certificate" in failures[0]["error"].lower()
        assert not dash.messages("register")
    finally:
        agent.stop()

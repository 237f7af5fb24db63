"""The reference dashboard as the benchmarks use it: unchanged, plus waits served from its receive
path, and a self-signed certificate for the ``wss://`` figures."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .harness import TOKEN, Dashboard, Record, Workspace


class Pending:
    """One awaited record: set from the dashboard's receive path."""

    def __init__(self, predicate: Callable[[Record], bool]) -> None:
        self.predicate = predicate
        self.event = threading.Event()
        self.record: Record | None = None

    def wait(self, what: str, timeout: float) -> Record:
        if not self.event.wait(timeout) or self.record is None:
            raise TimeoutError(f"no {what} within {timeout} s")
        return self.record


class Watch:
    """Waits served from the dashboard's receive path, so the bench can wait for "the status arrived"
    without re-scanning 200,000 records on every frame (which would steal the dashboard's GIL time
    and measure the bench instead of the agent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Pending] = []

    def expect(self, predicate: Callable[[Record], bool]) -> Pending:
        """Register before acting; the first matching record completes it."""
        pending = Pending(predicate)
        with self._lock:
            self._pending.append(pending)
        return pending

    def __call__(self, record: Record) -> None:
        if not self._pending:
            return
        with self._lock:
            for pending in [p for p in self._pending if p.predicate(record)]:
                pending.record = record
                pending.event.set()
                self._pending.remove(pending)


class BenchDashboard(Dashboard):
    """The reference dashboard, unchanged, with a :class:`Watch` on every received record."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        context = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
        self.watch = Watch()
        super().__init__(token=TOKEN, ssl_context=context, on_record=self.watch)


def new_dashboard(tls: TlsFiles | None = None) -> BenchDashboard:
    """The reference dashboard on a free loopback port (wss:// with ``tls``)."""
    dash = BenchDashboard(tls)
    dash.start()
    return dash


@dataclass
class TlsFiles:
    cert: Path
    key: Path
    bundle: Path  # the system CA store plus ``cert``: what the agent loads when ca_file is unset

    def agent_env(self) -> dict[str, str]:
        """No ``ca_file``: the agent loads the default CA store, as in production (OpenSSL reads the
        store from SSL_CERT_FILE, pointed at a copy of the system store that also trusts ``cert``)."""
        return {"SSL_CERT_FILE": str(self.bundle)}


def make_tls(ws: Workspace) -> TlsFiles | None:
    """A self-signed certificate for 127.0.0.1 (None without the openssl CLI)."""
    if shutil.which("openssl") is None:
        return None
    cert, key = ws.root / "cert.pem", ws.root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    system = Path(ssl.get_default_verify_paths().openssl_cafile)
    bundle = ws.root / "ca-bundle.pem"
    bundle.write_bytes((system.read_bytes() if system.is_file() else b"") + b"\n" + cert.read_bytes())
    return TlsFiles(cert, key, bundle)

"""Real git remotes on loopback for the repository tests: sshd, git daemon, git http-backend.

Each server is started by a fixture, waited for with a bounded poll of its port, and always
stopped in the fixture's teardown.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# dev/test points this at sshd unpacked from the openssh-server .deb when the package is not
# installed (installing it would enable ssh.service on the developer's machine).
SSHD = os.environ.get("NIXFLEET_TEST_SSHD") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {deadline}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def keygen(path: Path, comment: str = "test") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    path.chmod(0o600)
    return path


def _root_locked() -> bool:
    """Without PAM, sshd refuses even key logins to an account whose password is locked ('!')."""
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            if line.startswith("root:"):
                return line.split(":")[1].startswith("!") and Path("/etc/pam.d/sshd").exists()
    except OSError:
        pass
    return False


def sshd_argv(workdir: Path, config: Path) -> list[str]:
    """sshd as root refuses to start without its privilege separation user ``sshd``, which only the
    openssh-server package creates. For an unpacked sshd the user comes from a copy of /etc/passwd
    bind-mounted over it in a private mount namespace: the machine's accounts stay untouched."""
    argv = [SSHD, "-D", "-e", "-f", str(config)]
    try:
        pwd.getpwnam("sshd")
        return argv
    except KeyError:
        pass
    passwd = workdir / "passwd"
    passwd.write_text(Path("/etc/passwd").read_text() + "sshd:x:65534:65534:sshd privsep:/run/sshd:/usr/sbin/nologin\n")
    passwd.chmod(0o644)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", 'mount --bind "$0" /etc/passwd; exec "$@"',
            str(passwd), *argv]


class Sshd:
    """sshd on 127.0.0.1:<port> accepting one deploy key for root, with its own host key."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(self.dir / "host_ed25519", "host")
        self.deploy_key = keygen(self.dir / "deploy_key", "deploy")
        self.read_only_key = keygen(self.dir / "read_only_key", "read-only")
        # Like a hosting service's read-only deploy key: fetches allowed, pushes refused.
        only_fetch = (
            'command="case \\"$SSH_ORIGINAL_COMMAND\\" in git-upload-pack*) eval \\"$SSH_ORIGINAL_COMMAND\\";; '
            '*) echo \\"ERROR: this deploy key is read only\\" >&2; exit 1;; esac",restrict '
        )
        (self.dir / "authorized_keys").write_text(
            (self.dir / "deploy_key.pub").read_text() + only_fetch + (self.dir / "read_only_key.pub").read_text()
        )
        self.port = free_port()
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    "StrictModes no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    f"UsePAM {'yes' if _root_locked() else 'no'}",
                    "PermitRootLogin prohibit-password",
                    "AllowUsers root",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self.log = open(self.dir / "sshd.log", "wb")
        self.proc = subprocess.Popen(sshd_argv(self.dir, config), stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc)
        except RuntimeError:
            self.close()
            raise

    def host_line(self) -> str:
        """A known_hosts line pinning this server's real host key."""
        key = (self.dir / "host_ed25519.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"

    def url(self, path: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        stop(self.proc)
        self.log.close()


class GitDaemon:
    """``git daemon`` exporting a directory read-only (receive-pack off, its default)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", f"--base-path={base}", "--export-all",
             "--listen=127.0.0.1", f"--port={self.port}", str(base)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)

    def url(self, path: Path) -> str:
        return f"git://127.0.0.1:{self.port}/{path.relative_to(self.base)}"

    def close(self) -> None:
        stop(self.proc)


class _CgiHandler(BaseHTTPRequestHandler):
    """Runs ``git http-backend`` as a CGI per request. Without REMOTE_USER it refuses pushes."""

    root = ""
    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=30).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, content = out.partition(sep)
        status, headers = 200, []
        for raw in head.decode("latin-1").splitlines():
            name, _, value = raw.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class HttpBackend:
    """Smart-HTTP git server on loopback: clone/fetch work, push is refused (403, no REMOTE_USER)."""

    def __init__(self, root: Path) -> None:
        handler = type("Handler", (_CgiHandler,), {"root": str(root)})
        self.root = root
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-backend", daemon=True)
        self.thread.start()

    def url(self, path: Path, userinfo: str = "") -> str:
        auth = f"{userinfo}@" if userinfo else ""
        return f"http://{auth}127.0.0.1:{self.port}/{path.relative_to(self.root)}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def have_sshd() -> str | None:
    """Why the sshd tests cannot run here, or None."""
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        return f"sshd ({SSHD}) and ssh are needed; dev/test provides them"
    if os.geteuid() != 0:
        return "the sshd fixture logs in as root and must run as root"
    return None

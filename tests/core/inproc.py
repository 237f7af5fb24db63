"""An in-process dashboard session (Connection + Outbox + Reporter) for tests that drive the Reporter
directly, so the order of messages around a disconnect can be controlled exactly."""

from __future__ import annotations

import threading
from pathlib import Path

from nixfleet_agent.link import protocol
from nixfleet_agent.config import Config, load
from nixfleet_agent.link.session import Connection
from nixfleet_agent.link.outbox import Outbox
from nixfleet_agent.reporter import Reporter
from support import TEST_TOKEN


class Session:
    def __init__(self, url: str, tmp: Path, outbox_max: int = 10000, **env: str) -> None:
        base = {"NIXFLEET_URL": url, "NIXFLEET_TOKEN": TEST_TOKEN, "NIXFLEET_HOSTNAME": "inproc",
                "NIXFLEET_REPO_DIR": str(tmp), "NIXFLEET_STATE_DIR": str(tmp / "state"),
                "NIXFLEET_PING_INTERVAL": "1", "NIXFLEET_PING_TIMEOUT": "3", "NIXFLEET_BACKOFF_MAX": "1",
                "NIXFLEET_PLATFORM": "nixos"}
        base.update(env)
        self.cfg: Config = load({}, base)
        self.stop = threading.Event()
        self.outbox = Outbox(outbox_max)
        self.received: list[protocol.Inbound] = []
        self.registrations = 0
        self.connection = Connection(
            self.cfg, self.outbox,
            build_register=lambda: protocol.encode("register", {"hostname": "inproc"}),
            on_message=self.received.append,
            on_registered=self._registered,
            stop=self.stop,
        )
        self.reporter = Reporter(self.outbox, None, generation=lambda: "abc1234", stop=self.stop)
        self.reporter.bind(heartbeat_now=lambda: None, reconnect=self.connection.reconnect, exit=lambda code: None)

    def _registered(self) -> None:
        self.registrations += 1

    def __enter__(self) -> Session:
        self.connection.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.connection.shutdown()
        self.outbox.close()

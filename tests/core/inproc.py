"""An in-process dashboard session (Connection + Outbox + Reporter) for tests that drive the Reporter
directly, so the order of messages around a disconnect can be controlled exactly."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from nixfleet_agent.link import protocol
from nixfleet_agent.config import Config, load
from nixfleet_agent.link.session import Connection
from nixfleet_agent.link.journal import Journal
from nixfleet_agent.link.outbox import Outbox
from nixfleet_agent.reporter import Reporter
from support import TEST_TOKEN


class Session:
    def __init__(self, url: str, tmp: Path, outbox_max: int = 10000, *,
                 on_message: Callable[[Session, protocol.Inbound], None] | None = None,
                 on_registered: Callable[[Session], None] | None = None, journal: bool = False,
                 **env: str) -> None:
        base = {"NIXFLEET_URL": url, "NIXFLEET_TOKEN": TEST_TOKEN, "NIXFLEET_HOSTNAME": "inproc",
                "NIXFLEET_REPO_DIR": str(tmp), "NIXFLEET_STATE_DIR": str(tmp / "state"),
                "NIXFLEET_PING_INTERVAL": "1", "NIXFLEET_PING_TIMEOUT": "3", "NIXFLEET_BACKOFF_MAX": "1",
                "NIXFLEET_PLATFORM": "nixos"}
        base.update(env)
        self.cfg: Config = load({}, base)
        self.stop = threading.Event()
        self.outbox = Outbox(outbox_max, **({"journal": Journal(tmp / "state")} if journal else {}))
        self.received: list[protocol.Inbound] = []
        self.registrations = 0
        self.connection = Connection(
            self.cfg, self.outbox,
            build_register=lambda: protocol.encode("register", {"hostname": "inproc"}),
            on_message=self._message,
            on_registered=self._registered,
            stop=self.stop,
        )
        self.reporter = Reporter(self.outbox, None, generation=lambda: "abc1234", stop=self.stop)
        self.reporter.bind(heartbeat_now=lambda: None, reconnect=self.connection.reconnect, exit=lambda code: None)

        self._on_message, self._on_registered = on_message, on_registered

    def _message(self, message: protocol.Inbound) -> None:
        self.received.append(message)
        if self._on_message is not None:
            self._on_message(self, message)

    def _registered(self) -> None:
        self.registrations += 1
        if self._on_registered is not None:
            self._on_registered(self)

    def __enter__(self) -> Session:
        self.connection.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.connection.shutdown()
        self.outbox.close()

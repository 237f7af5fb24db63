"""The automatic reboot goes through the reboot command's own path: a real Dispatcher (the
one-command slot), the real Reporter/Outbox, ``commands.control.reboot`` and the ``systemctl``
shim. Announced on the dashboard before systemctl runs; refused while a command holds the slot."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from nixfleet_agent.commands import Context, control
from nixfleet_agent.config import load
from nixfleet_agent.dispatcher import Dispatcher
from nixfleet_agent.host.status import StatusStore
from nixfleet_agent.link.outbox import Outbox
from nixfleet_agent.reporter import Reporter
from nixfleet_agent.visibility import service
from nixfleet_agent.visibility.service import Visibility
from support import wait_for


def messages(outbox: Outbox) -> list[dict]:
    return [json.loads(outbox.wire_text(m)) for m in outbox.take(1000, 1 << 24)]


@pytest.fixture
def parts(tmp_path: Path, shims, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for key, value in shims.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(control, "REBOOT_DELAY", 0.0)
    monkeypatch.setattr(service, "ANNOUNCE_WAIT", 0.2)  # nothing confirms delivery here
    cfg = load({}, {"NIXFLEET_URL": "ws://127.0.0.1:9/ws", "NIXFLEET_TOKEN": "t", "NIXFLEET_HOSTNAME": "h",
                    "NIXFLEET_STATE_DIR": str(tmp_path / "state"), "NIXFLEET_REPO_DIR": str(tmp_path / "repo"),
                    "NIXFLEET_PLATFORM": "nixos", "NIXFLEET_REBOOT_ALLOW": "true"})
    (tmp_path / "state").mkdir(mode=0o700)
    stop = threading.Event()
    status = StatusStore(cfg.state_dir)
    outbox = Outbox(1000)
    outbox.set_live(True)  # as if registered: nothing is dropped, take() hands out the queue
    reporter = Reporter(outbox, status, stop=stop)
    dispatcher = Dispatcher(Context(cfg=cfg, reporter=reporter, status=status, repo=None, stop_event=stop))
    vis = Visibility(cfg, status, tmp_path / "repo")
    yield vis, dispatcher, outbox, stop
    vis.stop()
    stop.set()


def test_fires_through_control_reboot_announced_first(parts, shims) -> None:  # type: ignore[no-untyped-def]
    vis, dispatcher, outbox, stop = parts
    vis.start(lambda: dispatcher.pending()[0] is not None, dispatcher.run_exclusive, stop)
    assert vis.auto is not None
    assert vis.auto.busy().startswith("dashboard not connected")  # the announcement must be seen
    vis.connected = True
    assert vis.auto.busy() == ""
    vis.stop()  # drive it by hand from here; the thread has ended
    vis.auto.join(10)
    assert vis.auto.fire("needs reboot (kernel); inside the reboot window 00:00-00:00")
    wait_for(lambda: shims.calls("systemctl"), 15, "systemctl reboot")
    assert shims.calls("systemctl")[-1]["argv"] == ["reboot"]
    wait_for(lambda: dispatcher.pending()[0] is None, 15, "reboot job to finish")
    sent = messages(outbox)
    outputs = [m["payload"]["line"] for m in sent if m["type"] == "output"]
    assert outputs[0].startswith("🔁 Automatic reboot: needs reboot (kernel)")
    statuses = [m["payload"] for m in sent if m["type"] == "status"]
    assert statuses[-1]["command"] == "reboot" and statuses[-1]["status"] == "ok"


def test_refused_while_the_slot_is_taken(parts, shims) -> None:  # type: ignore[no-untyped-def]
    vis, dispatcher, outbox, stop = parts
    gate = threading.Event()
    assert dispatcher.run_exclusive("switch", lambda job: gate.wait(10))  # a command runs
    assert dispatcher.run_exclusive("reboot", lambda job: None) is False
    vis.connected = True
    vis.start(lambda: dispatcher.pending()[0] is not None, dispatcher.run_exclusive, stop)
    assert vis.auto is not None and vis.auto.busy() == "a command is running"
    gate.set()
    wait_for(lambda: dispatcher.pending()[0] is None, 10, "switch to finish")
    assert shims.calls("systemctl") == []

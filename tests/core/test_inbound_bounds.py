"""Memory and time follow the agent's bounds, not the peer (issue 12): a raw-frame peer sends what
no server library would - a 50 MiB frame, a ping flood it never reads the answers to, orphan
continuations, fragments of an oversized message, a frame trickled a byte at a time."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from rawpeer import RawPeer, frame

MIB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's high-water resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.fixture
def peer():
    raw = RawPeer().start()
    yield raw
    raw.close()


def settled_agent(start_agent, agent_env, peer):
    agent = start_agent(agent_env(NIXFLEET_URL=peer.url))
    conn = peer.accept()
    conn.recv_message("heartbeat")  # up and running: the baseline includes a full session
    time.sleep(0.5)
    return agent, conn


def send_in_background(conn, data: bytes) -> threading.Thread:
    def send():
        try:
            conn.sock.settimeout(60)
            conn.sock.sendall(data)
        except OSError:
            pass  # the agent cut the connection: expected for a violation

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def command_json(name: str) -> bytes:
    return json.dumps({"type": "command", "payload": {"command": name}}).encode()


def test_a_50_mib_frame_costs_no_memory(start_agent, agent_env, peer):
    """Before: +~100 MiB (recv_strict buffered and joined the payload, then the cap was checked)."""
    agent, conn = settled_agent(start_agent, agent_env, peer)
    before = peak_rss(agent.pid)
    sender = send_in_background(conn, frame(0x1, b"x" * (50 * MIB)))
    agent.wait_event("protocol_violation", timeout=20)
    peer.accept()  # and it comes back
    sender.join(30)
    growth = peak_rss(agent.pid) - before
    print(f"50 MiB frame: peak RSS growth {growth / MIB:.2f} MiB")
    assert growth < 4 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"
    assert "message larger than" in agent.events("protocol_violation")[0]["reason"]


def test_a_ping_flood_from_a_peer_that_does_not_read_keeps_one_pong(start_agent, agent_env, peer):
    """Before: one queued pong per ping while the writer was blocked (+289 MiB in 25 s)."""
    agent, conn = settled_agent(start_agent, agent_env, peer)
    before = peak_rss(agent.pid)
    flood = frame(0x9, b"p" * 125) * 300_000  # ~38 MiB of pings; the peer never reads a pong
    sender = send_in_background(conn, flood)
    sender.join(120)
    assert not sender.is_alive(), "the agent stopped reading"
    growth = peak_rss(agent.pid) - before
    print(f"ping flood (300,000 pings, no pong read): peak RSS growth {growth / MIB:.2f} MiB")
    assert growth < 8 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"


def test_an_orphan_continuation_fails_the_connection(start_agent, agent_env, peer):
    """Before: a continuation frame with no message to continue was taken as a whole message."""
    agent, conn = settled_agent(start_agent, agent_env, peer)
    conn.send_frame(0x0, command_json("refresh-git"))
    agent.wait_event("protocol_violation", timeout=10)
    peer.accept()
    assert "continuation" in agent.events("protocol_violation")[0]["reason"]
    assert agent.events("command_received") == []


def test_fragments_of_an_oversized_message_fail_the_connection(start_agent, agent_env, peer):
    """Before: the oversized start was dropped and its last fragment ran as a command of its own."""
    agent, conn = settled_agent(start_agent, agent_env, peer)
    sender = send_in_background(conn, frame(0x1, b"x" * (600 * 1024), fin=False)
                                + frame(0x0, b"x" * (600 * 1024), fin=False)
                                + frame(0x0, command_json("refresh-git")))
    agent.wait_event("protocol_violation", timeout=10)
    peer.accept()
    sender.join(10)
    assert agent.events("command_received") == []


def test_a_trickled_frame_meets_the_frame_deadline(start_agent, agent_env, peer):
    """Before: recv_strict waited for the whole frame, each byte resetting the per-recv timeout,
    so a peer sending a byte every 100 ms held the reader (and every command behind it)."""
    agent, conn = settled_agent(start_agent, agent_env, peer)
    stop = threading.Event()

    def trickle():
        try:
            conn.sock.sendall(frame(0x1, b"", length=1000)[:4])
            for _ in range(1000):
                if stop.wait(0.1):
                    return
                conn.sock.sendall(b"x")
        except OSError:
            pass

    threading.Thread(target=trickle, daemon=True).start()
    try:
        # no pong can pass a half-received frame, so the ping deadline and the frame deadline
        # expire together; either way the reader was never stuck in the frame
        gone = agent.wait_event("disconnected", timeout=20)
        assert gone[0]["reason"] in ("incomplete frame", "ping timeout")
        peer.accept()  # a fresh link, where commands can arrive again
    finally:
        stop.set()

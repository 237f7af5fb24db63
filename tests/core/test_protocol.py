"""Wire format: exact field sets (upstream-compatible) and inbound validation that never raises."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from nixfleet_agent.link import protocol
from nixfleet_agent.link.backoff import Backoff
from nixfleet_agent.link.outbox import Message, Outbox


def test_output_sets_command_and_is_error():
    assert protocol.output("pull", "boom", "stderr") == {"line": "boom", "stream": "stderr", "command": "pull", "is_error": True}
    assert protocol.output("pull", "ok") == {"line": "ok", "stream": "stdout", "command": "pull", "is_error": False}


def test_status_omits_empty_message_and_generation():
    assert protocol.status("pull", "ok", 0) == {"status": "ok", "command": "pull", "exit_code": 0}
    assert protocol.status("switch", "error", 1, "command failed", "abc1234") == {
        "status": "error", "command": "switch", "exit_code": 1, "message": "command failed", "generation": "abc1234"}


def test_command_rejected_reason_is_exact():
    assert protocol.command_rejected("test", 42) == {"reason": "command already running", "current_command": "test", "current_pid": 42}
    assert protocol.command_rejected("", None) == {"reason": "command already running"}


def test_progress_shapes():
    assert protocol.operation_progress("pull", 0, 4, "in_progress") == {"progress": {"pull": {"current": 0, "total": 4, "status": "in_progress"}}}
    assert protocol.operation_progress("tests", 8, 8, "complete") == {
        "progress": {"tests": {"current": 8, "total": 8, "results": None, "status": "complete"}}}
    assert set(protocol.test_progress(1, 5, 1, True, "")) == {"current", "total", "passed", "running", "result"}


def test_heartbeat_nulls_and_omissions():
    payload = protocol.heartbeat(generation="", nixpkgs_version="", pending_command=None, command_pid=None, metrics=None,
                                 update_status={}, source_commit="", store_path="", binary_hash="", lock_hash="")
    assert payload == {"generation": "", "nixpkgs_version": "", "pending_command": None, "command_pid": None,
                       "metrics": None, "update_status": {name: {"status": "", "message": "", "checked_at": ""}
                                                          for name in ("git", "lock", "system", "tests")}}
    assert json.loads(protocol.encode("heartbeat", payload))["payload"]["pending_command"] is None


def test_parse_valid_messages():
    assert protocol.parse('{"type":"registered","payload":{"host_id":"h"}}') == protocol.Registered("h")
    assert protocol.parse('{"type":"command","payload":{"command":"pull"}}') == protocol.Command("pull")
    assert protocol.parse('{"type":"kill_command","payload":{"signal":"SIGKILL","pid":0}}') == protocol.KillCommand("SIGKILL", 0)


def test_parse_rejections_name_type_and_reason():
    cases = {
        "not json": ("", "not JSON"),
        "[1,2]": ("", "not a JSON object"),
        '{"payload":{}}': ("", "missing or non-string 'type'"),
        '{"type":"command","payload":[]}': ("command", "payload is not an object"),
        '{"type":"command","payload":{"command":""}}': ("command", "command is not a non-empty string"),
        '{"type":"command","payload":{"command":5}}': ("command", "command is not a non-empty string"),
        '{"type":"kill_command","payload":{"pid":"1"}}': ("kill_command", "pid is not a non-negative integer"),
        '{"type":"kill_command","payload":{"pid":-1}}': ("kill_command", "pid is not a non-negative integer"),
        '{"type":"launch_missiles","payload":{}}': ("launch_missiles", "unknown message type"),
    }
    for text, (kind, reason) in cases.items():
        try:
            protocol.parse(text)
        except protocol.ProtocolError as exc:
            assert (exc.kind, exc.reason) == (kind, reason), text
        else:
            raise AssertionError(f"accepted {text!r}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"type": st.sampled_from(["registered", "command", "kill_command", "x", 1]),
                           "payload": json_values}).map(json.dumps),
))
def test_parse_never_raises_anything_but_protocol_error(frame):
    try:
        message = protocol.parse(frame)
    except protocol.ProtocolError:
        return
    assert isinstance(message, (protocol.Registered, protocol.Command, protocol.KillCommand))


def test_cut_marks_truncation_and_keeps_utf8_valid():
    text = protocol.cut("é" * 20000)
    assert len(text.encode()) <= protocol.MAX_LINE_BYTES + 40
    assert "truncated" in text
    assert protocol.cut("short") == "short"


def test_backoff_doubles_to_max_with_full_jitter_and_resets():
    backoff = Backoff(1.0, 60.0)
    ceilings = []
    for _ in range(9):
        ceilings.append(backoff.ceiling())
        assert 0 <= backoff.next() <= ceilings[-1]
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert len({round(Backoff(1, 60).next(), 6) for _ in range(20)}) > 1  # jittered, not lockstep
    backoff.reset()
    assert backoff.ceiling() == 1
    assert 30 <= backoff.to_max() <= 60 and backoff.ceiling() == 60


def test_backoff_retries_quickly_first_then_doubles():
    """A dashboard restart of a few seconds is bridged at <= 1 s spacing; a long outage backs off."""
    backoff = Backoff(1.0, 60.0, fast_attempts=3)
    ceilings = []
    for _ in range(7):
        ceilings.append(backoff.ceiling())
        backoff.next()
    assert ceilings == [1, 1, 1, 1, 2, 4, 8]
    assert 30 <= backoff.to_max() <= 60 and backoff.ceiling() == 60


def test_outbox_refuses_ephemeral_when_not_live_and_keeps_durable():
    box = Outbox(100)
    assert not box.put(Message("heartbeat", "{}", durable=False))
    assert box.put(Message("status", "{}"))
    box.set_live(True)
    assert box.put(Message("heartbeat", "{}", durable=False))
    box.set_live(False)  # a disconnect discards the stale heartbeat, keeps the status
    box.set_live(True)
    assert len(box) == 1 and [m.kind for m in box.take(10, 1000)] == ["status"]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=30),
       st.lists(st.sampled_from(["output", "status", "operation_progress"]), max_size=120),
       st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=400))
def test_outbox_overflow_keeps_order_and_every_status(limit, kinds, batch, batch_bytes):
    """Whatever overflows: statuses all survive, order is kept, and every dropped line is counted,
    however the writer batches its reads (``peek_many`` by count and by bytes)."""
    box = Outbox(limit)
    sent = []
    for index, kind in enumerate(kinds):
        text = protocol.encode(kind, {"line": f"l{index}", "i": index}) if kind == "output" else json.dumps({"i": index})
        box.put(Message(kind, text, True, "cmd"))
        sent.append((kind, index))
    box.set_live(True)
    delivered, announced = [], 0
    while messages := box.take(batch, batch_bytes):
        assert len(messages) <= batch
        assert len(messages) == 1 or sum(len(m.text) for m in messages) <= batch_bytes
        for message in messages:
            payload = json.loads(box.wire_text(message))
            line = payload.get("payload", {}).get("line", "")
            if "dropped" in line:
                announced += int(line.split("[nixfleet-agent: ")[1].split()[0])
            else:
                index = payload["payload"]["i"] if "payload" in payload else payload["i"]
                delivered.append((message.kind, index))
        box.delivered(box.written(messages))
    assert delivered == [item for item in sent if item in delivered]  # order kept
    assert [i for k, i in sent if k != "output"] == [i for k, i in delivered if k != "output"]  # non-output never dropped
    assert announced == len(sent) - len(delivered)

"""Property (issue 13): whatever corrupted journal/state files the agent finds, reading them never
raises and never writes outside the state directory; every record left as ``*.json`` is valid."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixfleet_agent.ops import journal
from nixfleet_agent.host.status import snapshot

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=8)
_ids = st.sampled_from(["20261201T000000Z-abcd", "../../escape", "/abs", "..", ".hidden", "a/b", "", "x" * 80]) | st.text(max_size=12)
_FIELDS = ["id", "command", "action", "argv", "launcher", "log_path", "result_path", "pid", "started_at", "reported"]


def _base(state: Path, op_id: str) -> dict[str, object]:
    return {"id": op_id, "command": "switch", "action": "switch", "argv": ["nixos-rebuild"], "launcher": "detached",
            "log_path": str(state / "logs" / f"{op_id}.log"), "result_path": str(state / "operations" / f"{op_id}.result"),
            "pid": None, "started_at": 1.0, "reported": False}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op_id=_ids, changes=st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=3),
       cut=st.none() | st.integers(min_value=0, max_value=400), state_doc=_json)
def test_corrupted_journal_and_state_never_raise_or_escape(op_id, changes, cut, state_doc) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = root / "a" / "state"
        (state / "operations").mkdir(parents=True)
        record = {**_base(state, op_id), **changes}
        text = json.dumps(record)
        (state / "operations" / "20261201T000000Z-abcd.json").write_text(text if cut is None else text[:cut])
        (state / "state.json").write_text(json.dumps(state_doc))
        before = sorted(str(p) for p in root.rglob("*") if state not in p.parents and p != state)
        for op in journal.unreported(state):
            journal.mark_reported(state, op)
        journal.prune(state)
        snap = snapshot(state)
        assert set(snap["compartments"]) == {"git", "lock", "system", "tests"}
        after = sorted(str(p) for p in root.rglob("*") if state not in p.parents and p != state)
        assert after == before
        for path in (state / "operations").glob("*.json"):
            journal.parse(json.loads(path.read_text()), path.stem, state)  # survivors are valid

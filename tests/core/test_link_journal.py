"""The undelivered-status journal survives files it cannot use: a corrupt entry is quarantined
once and the agent still comes up (a `"seq": 1e999` entry used to raise OverflowError on every start)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nixfleet_agent.link.journal import DIR_NAME, Journal
from nixfleet_agent.link.outbox import Outbox

BAD = {
    "overflow": b'{"seq": 1e999, "kind": "status", "text": "x", "command": "test"}',
    "other-seq": b'{"seq": 7, "kind": "status", "text": "x", "command": "test"}',
    "bool-seq": b'{"seq": true, "kind": "status", "text": "x", "command": "test"}',
    "not-utf8": b'{"seq": 2, "kind": "status", "text": "\xff\xfe", "command": "test"}',
    "wrong-type": b'{"seq": 2, "kind": "status", "text": ["x"], "command": "test"}',
    "not-an-object": b"[2]",
    "truncated": b'{"seq": 2, "kind": "sta',
    "huge": b'{"seq": 2, "kind": "status", "command": "t", "text": "' + b"a" * (2 << 20) + b'"}',
}


@pytest.mark.parametrize("content", list(BAD.values()), ids=list(BAD))
def test_a_bad_entry_is_quarantined_once_and_the_good_one_replayed(tmp_path: Path, content: bytes) -> None:
    journal = Journal(tmp_path)
    journal.add(1, "status", '{"type":"status"}', "switch")
    bad = tmp_path / DIR_NAME / f"{2:016d}.json"
    bad.write_bytes(content)
    assert journal.load() == [(1, "status", '{"type":"status"}', "switch")]
    assert not bad.exists() and bad.with_name(bad.stem + ".bad").exists()
    assert journal.load() == [(1, "status", '{"type":"status"}', "switch")]  # not seen again
    Outbox(journal=journal)  # the agent's construction path does not raise either


def test_the_file_name_is_the_sequence_number_so_remove_finds_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.add(5, "status", "t", "test")
    assert [e[0] for e in journal.load()] == [5]
    journal.remove(5)
    assert journal.load() == []
    stray = tmp_path / DIR_NAME / "5.json"  # not a name the journal writes: ignored, left alone
    stray.write_text(json.dumps({"seq": 5, "kind": "status", "text": "t"}))
    assert journal.load() == [] and stray.exists()

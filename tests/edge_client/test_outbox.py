"""The telemetry outbox: durable, bounded (merge, then drop and count), retried with backoff."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from edge_client.outbox import Outbox


def _concat(older: str, newer: str) -> str:
    a, b = json.loads(older), json.loads(newer)
    return json.dumps({"n": a["n"] + b["n"]})


def _put(box: Outbox, n: int = 1, version: int = 1, **kw: object) -> str:
    key = uuid.uuid4().hex
    box.put(key, "telemetry", "m", version, json.dumps({"n": n}), **kw)  # type: ignore[arg-type]
    return key


def test_survives_reopen_with_keys_and_attempts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, backoff_base_s=10)
    k1, k2 = _put(box), _put(box)
    box.failed(k1, "connection refused", now=1000.0)
    box.close()
    again = Outbox(path)
    entries = again.entries()
    assert [e.key for e in entries] == [k1, k2]
    assert entries[0].attempts == 1 and entries[0].last_error == "connection refused"
    assert 1005.0 <= entries[0].next_attempt <= 1015.0  # 10 s × jitter in [0.5, 1.5]


def test_backoff_grows_exponentially_up_to_the_cap(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", backoff_base_s=1, backoff_max_s=20)
    key = _put(box)
    delays = [box.failed(key, "x", now=0.0) for _ in range(7)]
    for attempt, delay in enumerate(delays):
        nominal = min(20, 2**attempt)
        assert 0.5 * nominal <= delay <= 1.5 * nominal
    assert box.due(now=0.0) == []
    assert [e.key for e in box.due(now=100.0)] == [key]


def test_sent_entries_are_forgotten(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    k = _put(box)
    box.sent(k)
    assert box.depth() == 0


def test_at_the_bound_unsent_reports_of_a_version_merge(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_entries=3, merge=_concat)
    keys = [_put(box, n=i + 1) for i in range(3)]
    _put(box, n=10)
    entries = box.entries()
    assert box.depth() == 3
    assert entries[0].key == keys[0] and json.loads(entries[0].body) == {"n": 3}  # 1 + 2
    assert box.counter("merged_total") == 1 and box.pending_dropped() == 0


def test_attempted_reports_are_never_merged_and_the_oldest_is_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_entries=2, merge=_concat)
    k1 = _put(box, version=1)
    k2 = _put(box, version=1)
    box.failed(k1, "offline")  # maybe on the server already: merging could count it twice
    box.failed(k2, "offline")
    _put(box, version=1)
    assert k1 not in [e.key for e in box.entries()]
    assert box.pending_dropped() == 1 and box.counter("dropped_total") == 1


def test_other_versions_do_not_merge(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_entries=2, merge=_concat)
    _put(box, version=1)
    _put(box, version=2)
    _put(box, version=3)
    assert [e.version for e in box.entries()] == [2, 3]
    assert box.pending_dropped() == 1


def test_the_next_report_consumes_the_dropped_count(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", max_entries=2)
    for _ in range(4):
        _put(box)
    assert box.pending_dropped() == 2
    _put(box, consumes_dropped=box.pending_dropped())
    assert box.pending_dropped() == 1  # that put itself had to drop one more
    assert box.counter("dropped_total") == 3


def test_discard_counts_as_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    k = _put(box)
    box.discard(k)
    box.discard(k)  # idempotent
    assert box.depth() == 0 and box.pending_dropped() == 1


def test_bound_must_allow_merging(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(tmp_path / "o.sqlite3", max_entries=1)

"""The audit trail's chain: append, verify, tampering found, restarts, concurrent writers."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import Session

from registry import audit
from registry.audit import AuditQuery, list_records, record, verify
from registry.db import make_engine, session_scope
from registry.errors import InvalidQueryError
from registry.models import AuditRecord
from registry.models.audit import GENESIS_HASH
from tests.registry.support import run_in_threads


def write(engine: Engine, n: int, *, actor: str = "admin:alice", action: str = "alias.move",
          request_id: str | None = None, reason: str | None = None) -> None:
    for i in range(n):
        with session_scope(engine, write=True) as s:
            record(s, actor=actor, action=action, target=f"digits/t{i}", request_id=request_id,
                   before={"version": i}, after={"version": i + 1, "pct": 12.5}, reason=reason)


def records(engine: Engine) -> list[AuditRecord]:
    with session_scope(engine) as s:
        return list_records(s, AuditQuery(limit=10_000))


def verify_engine(engine: Engine) -> audit.VerifyReport:
    with session_scope(engine) as s:
        return verify(s)


def test_records_form_a_chain_that_verifies(engine: Engine) -> None:
    assert verify_engine(engine).ok and verify_engine(engine).checked == 0
    write(engine, 3, request_id="req-1", reason="why not")
    rows = records(engine)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    assert rows[2].after == {"version": 3, "pct": 12.5}
    assert {r.request_id for r in rows} == {"req-1"} and rows[0].reason == "why not"
    report = verify_engine(engine)
    assert report.ok, report.problems
    assert (report.checked, report.head_seq, report.head_hash) == (3, 3, rows[-1].hash)


def test_an_altered_record_is_found(engine: Engine) -> None:
    write(engine, 4)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_record SET actor = 'admin:mallory' WHERE seq = 2"))
    report = verify_engine(engine)
    assert not report.ok
    assert [(p.seq, p.kind) for p in report.problems] == [(2, "altered")]


def test_altered_json_and_a_rehashed_record_are_found(engine: Engine) -> None:
    write(engine, 3)
    rows = records(engine)
    forged = {"version": 99}
    forged_hash = audit.record_hash(
        seq=2, at=rows[1].at, actor=rows[1].actor, action=rows[1].action, target=rows[1].target,
        request_id=rows[1].request_id, before=rows[1].before, after=forged,
        reason=rows[1].reason, prev_hash=rows[1].prev_hash,
    )
    with Session(engine) as s:  # a forger who recomputes the record's own hash
        row = s.get(AuditRecord, rows[1].id)
        assert row is not None
        row.after, row.hash = forged, forged_hash
        s.add(row)
        s.commit()
    kinds = [(p.seq, p.kind) for p in verify_engine(engine).problems]
    assert kinds == [(3, "broken_link")]


def test_a_removed_record_is_found_in_the_middle_and_at_the_end(engine: Engine) -> None:
    write(engine, 5)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_record WHERE seq = 3"))
    problems = verify_engine(engine).problems
    assert [(p.seq, p.kind) for p in problems] == [(3, "missing")]
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_record WHERE seq IN (4, 5)"))
    problems = verify_engine(engine).problems
    assert [(p.seq, p.kind) for p in problems] == [(3, "missing")]
    assert "3–5" in problems[0].detail  # the head still names record 5


def test_a_rolled_back_action_leaves_no_record(engine: Engine) -> None:
    write(engine, 1)
    with pytest.raises(RuntimeError), session_scope(engine, write=True) as s:
        record(s, actor="admin:alice", action="alias.move", target="digits/production")
        raise RuntimeError("the action failed after recording")
    assert [r.seq for r in records(engine)] == [1]
    write(engine, 1)  # the chain continues where the committed records end
    assert [r.seq for r in records(engine)] == [1, 2] and verify_engine(engine).ok


def test_the_trail_survives_a_restart(engine: Engine, db_url: str) -> None:
    write(engine, 2)
    fresh = make_engine(db_url)  # a new process's engine: nothing cached
    try:
        write(fresh, 1)
        report = verify_engine(fresh)
        assert report.ok and report.checked == 3
        assert [r.target for r in records(fresh)] == ["digits/t0", "digits/t1", "digits/t0"]
    finally:
        fresh.dispose()


def test_a_missing_head_row_is_rebuilt_from_the_newest_record(engine: Engine) -> None:
    write(engine, 2)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_head"))
    assert [(p.kind) for p in verify_engine(engine).problems] == ["head"]
    write(engine, 1)
    report = verify_engine(engine)
    assert report.ok and report.checked == 3


def test_concurrent_writers_never_fork_the_chain(engine: Engine) -> None:
    def five() -> None:
        write(engine, 5, actor="admin:busy")

    assert run_in_threads(five, 6) == []
    rows = records(engine)
    assert [r.seq for r in rows] == list(range(1, 31))
    assert verify_engine(engine).ok


def test_filters_and_paging(engine: Engine) -> None:
    write(engine, 3, actor="admin:alice", action="alias.move")
    write(engine, 2, actor="device:pi-1", action="device.enrol")
    with session_scope(engine) as s:
        assert len(list_records(s, AuditQuery(actor="device:pi-1"))) == 2
        assert len(list_records(s, AuditQuery(action="device.*"))) == 2
        assert [r.seq for r in list_records(s, AuditQuery(target="digits/t1"))] == [2, 5]
        assert [r.seq for r in list_records(s, AuditQuery(target="digits/t*", limit=2))] == [1, 2]
        assert [r.seq for r in list_records(s, AuditQuery(after_seq=2, limit=2))] == [3, 4]
        newest = list_records(s, AuditQuery(newest_first=True, limit=2))
        assert [r.seq for r in newest] == [5, 4]
        assert [r.seq for r in list_records(s, AuditQuery(newest_first=True, after_seq=4))] == [
            3, 2, 1]
        at = newest[0].at
        assert [r.seq for r in list_records(s, AuditQuery(since=at))] == [5]
        assert 5 not in [r.seq for r in list_records(s, AuditQuery(until=at))]
        with pytest.raises(InvalidQueryError, match="limit"):
            list_records(s, AuditQuery(limit=0))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"action": "publish"}, "dotted"),
        ({"action": "Version.Publish"}, "dotted"),
        ({"actor": ""}, "actor"),
        ({"target": "x" * 301}, "target"),
        ({"reason": "x" * 1001}, "reason"),
        ({"after": {"x": object()}}, "JSON"),
    ],
)
def test_bad_records_are_refused_and_write_nothing(
    engine: Engine, kw: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"actor": "admin:a", "action": "alias.move", "target": "digits/p"}
    args.update(kw)
    with pytest.raises(InvalidQueryError, match=message), session_scope(engine, write=True) as s:
        record(s, **args)  # type: ignore[arg-type]
    assert records(engine) == []


def test_request_scope_fills_in_the_request_id(engine: Engine) -> None:
    with audit.request_scope("req-42"), session_scope(engine, write=True) as s:
        record(s, actor="admin:a", action="alias.move", target="digits/p")
        record(s, actor="admin:a", action="alias.move", target="digits/q", request_id="own")
    assert [r.request_id for r in records(engine)] == ["req-42", "own"]

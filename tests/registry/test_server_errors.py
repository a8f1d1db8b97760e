"""Server errors (status >= 500) beside all errors (>= 400): the rollups and migration 0009,
the evidence, the monitor, and the ``error_rate`` guard's ``statuses``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session

from edgefleet.errors import describe_validation
from edgefleet.rollouts import GuardSpec, RolloutCreate, StepSpec
from registry import migrate, rollups
from registry.db import make_engine, session_scope
from registry.evidence import insert_records, latency_bucket
from registry.models.evidence import InferenceRecord
from registry.rollouts import queries
from registry.rollouts.guards import FAIL, PASS, WAIT, evaluate, evidence_summary
from registry.version_evidence import VersionEvidence, version_evidence
from server.evidence.monitor import monitor
from tests.registry.support import PostgresDatabases
from tests.registry.test_rollouts import fleet, start, state, tick  # noqa: F401  (fixture)

T0 = datetime(2030, 6, 1, 10, tzinfo=UTC)  # on an hour boundary
KEY = ["model", "bucket_start", "version", "variant", "latency_bucket"]


def record(request_id: str, status: int, *, at: datetime = T0, version: int = 1,
           row_index: int = 0, ms: float = 2.0, variant: str | None = None) -> dict[str, Any]:
    answered = status < 400
    return {
        "request_id": request_id, "row_index": row_index, "created_at": at, "model": "digits",
        "version": version, "alias": "production", "variant": variant, "caller": "app:shop",
        "status": status, "latency_ms": ms, "latency_bucket": latency_bucket(ms),
        "label": "7" if answered else None, "confidence": 0.9 if answered else None,
        "input_sha256": None, "inputs": None,
    }


#: 200s (one of two rows), 400s and 503s over two hours, two latency buckets and a variant.
MIXED = [
    record("ok-0", 200), record("ok-0", 200, row_index=1), record("ok-1", 200),
    record("bad-0", 400), record("bad-1", 422), record("down-0", 503),
    record("down-1", 500, ms=40.0), record("slow-bad", 400, ms=40.0),
    record("next-ok", 200, at=T0 + timedelta(hours=1, minutes=5)),
    record("next-bad", 400, at=T0 + timedelta(hours=1, minutes=6)),
    record("arm-down", 503, at=T0 + timedelta(minutes=30), version=2, variant="canary"),
]


def rollup_rows(conn: sa.Connection) -> dict[tuple[Any, ...], dict[str, int]]:
    t = rollups.INFERENCE_ROLLUP
    return {tuple(r[k] for k in KEY): {k: r[k] for k in rollups.INF_COUNTERS}
            for r in (dict(m) for m in conn.execute(sa.select(t)).mappings())}


def expected_rollups(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, int]]:
    """Brute force: per hour and key, requests (row 0), errors (>= 400), server errors (>= 500)."""
    out: dict[tuple[Any, ...], dict[str, int]] = {}
    for r in rows:
        if r["row_index"] != 0:
            continue
        key = (r["model"], rollups.bucket_floor(r["created_at"], 3600), r["version"],
               r["variant"] or "", r["latency_bucket"])
        c = out.setdefault(key, dict.fromkeys(rollups.INF_COUNTERS, 0))
        c["requests"] += 1
        c["errors"] += r["status"] >= 400
        c["server_errors"] += r["status"] >= 500
    return out


# --- the rollups ---------------------------------------------------------------------------------
def test_rollups_count_errors_and_server_errors_apart(engine: Engine) -> None:
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "inference_rollup" in statement and statement.startswith("INSERT"):
            statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        with engine.begin() as conn:
            insert_records(conn, MIXED)
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) == 1  # one multi-row upsert for the whole batch
    with engine.begin() as conn:
        insert_records(conn, MIXED)  # stored already: counts nothing again
        counted = rollup_rows(conn)
        assert counted == expected_rollups(MIXED)
        total = {k: sum(c[k] for c in counted.values()) for k in rollups.INF_COUNTERS}
        assert total == {"requests": 10, "errors": 7, "server_errors": 3}
        answered = conn.execute(sa.select(sa.func.sum(rollups.PREDICTION_ROLLUP.c.answered))
                                ).scalar_one()
        assert answered == 4  # the 200s' rows only
        assert rollups.rebuild(conn) == len(MIXED)
        assert rollup_rows(conn) == counted  # recomputed from the records: the same


def test_monitor_shows_both_counts_from_rollups_and_records(engine: Engine) -> None:
    with engine.begin() as conn:
        insert_records(conn, MIXED)
    with Session(engine) as s:
        whole = monitor(s, "digits", T0, T0 + timedelta(hours=2))  # two rollup hours
        parts = monitor(s, "digits", T0 + timedelta(minutes=1), T0 + timedelta(hours=2))
        raw = monitor(s, "digits", T0, T0 + timedelta(hours=2), use_rollups=False)
    assert whole.versions == raw.versions and whole.variants == raw.variants
    v1, v2 = whole.versions
    assert (v1.requests, v1.errors, v1.server_errors) == (9, 6, 2)
    assert (v2.requests, v2.errors, v2.server_errors) == (1, 1, 1)
    assert [(v.variant, v.server_errors) for v in whole.variants] == [("canary", 1)]
    first = {v.version: (v.requests, v.errors, v.server_errors) for v in parts.versions}
    assert first == {1: (2, 1, 0), 2: (1, 1, 1)}  # T0's minute left out: records answer


# --- migration 0009 ------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database (no revision) per backend."""
    dbs: PostgresDatabases | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        dbs = request.getfixturevalue("postgres")
        url = dbs.create("srv_")
    engine = make_engine(url)
    yield engine
    engine.dispose()
    if dbs is not None:
        dbs.drop(url)


@pytest.mark.parametrize("old", ["0004", "0008"])
def test_upgrade_keeps_old_rows_and_fills_server_errors_in(fresh: Engine, old: str) -> None:
    """Records logged at an older revision: at 0004 migration 0005 builds their rollups (with
    the counters its table has), at 0008 they are counted as then (no ``server_errors``);
    0009 adds the column, 0 for every row, and fills in the rows the log has 5xx records of."""
    assert migrate.upgrade(fresh, old) == old
    with fresh.begin() as conn:
        conn.execute(sa.insert(InferenceRecord.__table__), MIXED)  # type: ignore[attr-defined]
        if old == "0008":
            rollups.rebuild(conn)
    if old == "0008":
        columns = {c["name"] for c in sa.inspect(fresh).get_columns("inference_rollup")}
        assert "server_errors" not in columns and {"requests", "errors"} <= columns
    assert migrate.upgrade(fresh) == migrate.head_revision() == "0009"
    assert migrate.check(fresh) == []
    with fresh.connect() as conn:
        assert rollup_rows(conn) == expected_rollups(MIXED)
    # without 5xx records every old row keeps the default 0, and its other counts
    assert migrate.downgrade(fresh, "0008") == "0008"
    with fresh.begin() as conn:
        conn.execute(sa.text("DELETE FROM inference_record WHERE status >= 500"))
    assert migrate.upgrade(fresh) == "0009"
    with fresh.connect() as conn:
        counted = rollup_rows(conn)
    assert counted and all(c["server_errors"] == 0 for c in counted.values())
    assert sum(c["errors"] for c in counted.values()) == 7  # the old counts are kept


# --- evidence and the guard ----------------------------------------------------------------------
T1 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(requests: int, errors: int, server_errors: int) -> VersionEvidence:
    return VersionEvidence(model="m", version=2, since=T1, until=None, requests=requests,
                           errors=errors, server_errors=server_errors)


BASE = ev(1000, 10, 5)


def test_statuses_server_ignores_4xx_and_fails_on_5xx() -> None:
    every = GuardSpec(kind="error_rate", margin=0.02, min_samples=100)
    server = GuardSpec(kind="error_rate", margin=0.02, min_samples=100, statuses="server")
    assert every.statuses == "all"  # the default: every status >= 400, as before
    malformed = ev(1000, 300, 5)  # one caller's malformed bodies: 4xx
    assert evaluate(every, malformed, BASE).decision == FAIL
    r = evaluate(server, malformed, BASE)
    assert r.decision == PASS and "server error rate (5xx)" in r.reason
    assert (r.candidate, r.baseline) == (0.005, 0.005)
    broken = ev(1000, 60, 60)
    r = evaluate(server, broken, BASE)
    assert r.decision == FAIL and r.candidate == pytest.approx(0.06)
    assert evaluate(server, ev(50, 0, 0), BASE).decision == WAIT  # too little data
    assert evidence_summary(broken)["server_errors"] == 60
    # evidence without the figure (another evidence source) counts none
    without = SimpleNamespace(requests=1000, errors=300)
    assert evaluate(server, without, BASE).decision == PASS  # type: ignore[arg-type]


def test_statuses_is_refused_unless_all_or_server_and_outside_error_rate() -> None:
    guard = {"kind": "error_rate", "statuses": "4xx"}
    with pytest.raises(ValidationError) as bad:
        RolloutCreate.model_validate({"model": "m", "candidate": 2, "guards": [guard]})
    message = describe_validation(bad.value)
    assert message == "guards.0.statuses: Input should be 'all' or 'server'"
    with pytest.raises(ValidationError, match="error_rate guard only, not latency_p99"):
        GuardSpec.model_validate({"kind": "latency_p99", "statuses": "server"})
    assert GuardSpec.model_validate({"kind": "latency_p99"}).statuses == "all"


def test_version_evidence_counts_server_errors(fleet: Engine) -> None:  # noqa: F811
    with fleet.begin() as conn:
        insert_records(conn, MIXED)
    with Session(fleet) as s:
        one = version_evidence(s, model="digits", version=1, since=T0)
        two = version_evidence(s, model="digits", version=2, since=T0, variant="canary")
    assert (one.requests, one.errors, one.server_errors) == (9, 6, 2)
    assert one.server_error_rate == pytest.approx(2 / 9)
    assert one.to_dict()["server_errors"] == 2
    assert (two.requests, two.errors, two.server_errors) == (1, 1, 1)


def _log(engine: Engine, at: datetime, version: int, statuses: list[int]) -> None:
    with engine.begin() as conn:
        insert_records(conn, [record(f"v{version}-{at.timestamp()}-{i}", s, at=at,
                                     version=version) for i, s in enumerate(statuses)])


@pytest.mark.parametrize(("statuses", "failure", "outcome"), [
    ("all", 400, "rolled_back"), ("server", 400, "promoted"), ("server", 503, "rolled_back")])
def test_a_rollout_judges_by_the_statuses_it_names(fleet: Engine, statuses: str,  # noqa: F811
                                                    failure: int, outcome: str) -> None:
    guard = GuardSpec(kind="error_rate", margin=0.05, min_samples=20,
                      statuses=statuses)  # type: ignore[arg-type]
    rid = start(fleet, steps=[StepSpec(percent=100, bake_s=0)], guards=[guard])
    with session_scope(fleet) as s:
        row = queries.get_rollout(s, rid)
        began = row.step_started_at or row.created_at
    _log(fleet, began - timedelta(minutes=10), 1, [200] * 40)  # the baseline
    _log(fleet, began + timedelta(seconds=1), 2, [200] * 20 + [failure] * 20)  # the candidate
    tick(fleet, rid, after_s=5)
    assert state(fleet, rid)[0] == outcome
    with session_scope(fleet) as s:
        judged = [e.evidence for e in queries.timeline(s, rid)
                  if e.evidence and "evidence" in e.evidence]
    candidate = judged[-1]["evidence"]["candidate"]
    assert (candidate["errors"], candidate["server_errors"]) == (
        20, 20 if failure >= 500 else 0)

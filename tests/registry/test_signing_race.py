"""Server workers starting at once: the signing key is created and registered exactly once, and
processes appending to the audit trail at once never fork it (real processes, SQLite and
PostgreSQL; the tables start empty, so the chain head row is created under the race too)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select

from registry.audit import AuditQuery, list_records, verify
from registry.db import session_scope
from registry.models import SigningKey
from tests.registry.race_support import append_records, open_keys, run_processes

pytestmark = pytest.mark.slow  # starts processes
WORKERS = 3


def test_workers_opening_the_key_at_once_register_it_once(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    rounds = 3  # the first key, then two keys swapped in by hand (each retires the one before)
    paths = [str(tmp_path / f"keys-{r}" / "signing.pem") for r in range(rounds)]
    outcomes = run_processes(open_keys, [(db_url, paths)] * WORKERS, rounds)
    assert [kind for kind, _ in outcomes] == ["ok"] * len(outcomes), outcomes
    ids = [str(key_id) for _, key_id in outcomes]
    per_round = [set(ids[r * WORKERS:(r + 1) * WORKERS]) for r in range(rounds)]
    assert all(len(ids_of_round) == 1 for ids_of_round in per_round), per_round
    round_ids = [next(iter(s)) for s in per_round]
    with session_scope(engine) as s:
        keys = {k.key_id: k for k in s.exec(select(SigningKey)).all()}
        current = s.exec(select(SigningKey).where(col(SigningKey.retired_at).is_(None))).all()
        created = list_records(s, AuditQuery(action="key.create", limit=100))
        report = verify(s)
    assert sorted(keys) == sorted(round_ids)
    assert [k.key_id for k in current] == [round_ids[-1]]
    assert [r.target for r in created] == [f"key/{k}" for k in round_ids]
    assert [r.actor for r in created] == ["system:server"] * rounds
    assert created[0].before is None
    assert created[1].before == {"current": [round_ids[0]]}
    assert report.ok and report.checked == rounds, report.problems


def test_processes_appending_at_once_never_fork_the_chain(engine: Engine, db_url: str) -> None:
    rounds = 5
    outcomes = run_processes(append_records,
                             [(db_url, f"admin:worker{i}", rounds) for i in range(WORKERS)],
                             rounds)
    assert [kind for kind, _ in outcomes] == ["ok"] * len(outcomes), outcomes
    assert sorted(int(seq) for _, seq in outcomes) == list(range(1, WORKERS * rounds + 1))  # type: ignore[call-overload]
    with session_scope(engine) as s:
        rows = list_records(s, AuditQuery(limit=100))
        report = verify(s)
    assert [r.seq for r in rows] == list(range(1, WORKERS * rounds + 1))
    assert {r.actor for r in rows} == {f"admin:worker{i}" for i in range(WORKERS)}
    assert report.ok and report.checked == WORKERS * rounds, report.problems

"""The audit trail's cost: what one record adds to a write transaction, and what verifying costs.

For each backend (SQLite in a temporary file; PostgreSQL at ``--postgres`` in a scratch database
that is dropped afterwards), on the registry's migrated schema:

* ``tx/s alone``: committed write transactions per second that only update one alias-like row
  (the baseline: a ``model.updated_at`` update), one writer;
* ``tx/s + record``: the same transactions each also writing one audit record;
* ``4 writers + record``: four threads doing the second kind at once (they serialise on the chain
  head), total transactions per second;
* ``verify (ms / 1k)``: walking the whole chain, milliseconds per thousand records.

    .venv/bin/python bench/bench_audit.py [--records 2000] [--postgres URL | --no-postgres]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from _common import Column, print_table

from registry import audit, migrate
from registry.catalog import create_model
from registry.db import make_engine, session_scope
from registry.models import ModelCreate

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _touch(engine: sa.Engine, n: int, with_record: bool, tag: str) -> None:
    for i in range(n):
        with session_scope(engine, write=True) as s:
            s.execute(sa.text("UPDATE model SET updated_at = CURRENT_TIMESTAMP WHERE id = 1"))
            if with_record:
                audit.record(s, actor="admin:bench", action="alias.move",
                             target=f"digits/{tag}{i}", after={"version": i})


def _rate(fn: object, n: int) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return n / (time.perf_counter() - start)


def measure(url: str, n: int) -> list[object]:
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        with session_scope(engine, write=True) as s:
            create_model(s, ModelCreate(name="digits"))
        alone = _rate(lambda: _touch(engine, n, False, "a"), n)
        recorded = _rate(lambda: _touch(engine, n, True, "r"), n)
        threads = [threading.Thread(target=_touch, args=(engine, n // 4, True, f"t{k}-"))
                   for k in range(4)]

        def concurrent() -> None:
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        together = _rate(concurrent, 4 * (n // 4))
        with session_scope(engine) as s:
            start = time.perf_counter()
            report = audit.verify(s)
            verify_ms = (time.perf_counter() - start) * 1e3
        assert report.ok, report.problems
        return [url.split(":", 1)[0].split("+")[0], alone, recorded, together,
                verify_ms / report.checked * 1e3, report.checked]
    finally:
        engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--postgres", default=DEFAULT_PG)
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure(f"sqlite:///{Path(tmp) / 'bench.db'}", args.records))
    if not args.no_postgres:
        import psycopg

        admin = args.postgres.replace("+psycopg", "")
        name = f"edgefleet_bench_audit_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            rows.append(measure(args.postgres.rsplit("/", 1)[0] + f"/{name}", args.records))
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print_table([Column("backend", 11), Column("tx/s alone", 11, ",.0f"),
                 Column("tx/s + record", 14, ",.0f"), Column("4 writers + record", 19, ",.0f"),
                 Column("verify (ms / 1k)", 17, ".1f"), Column("records", 8, ",d")], rows)


if __name__ == "__main__":
    main()

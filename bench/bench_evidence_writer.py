"""Benchmark: the inference log writer's per-batch work, rows/s and CPU per row.

Fills a fresh database (SQLite in a temporary directory, and PostgreSQL when
``--postgres URL`` names a server; a scratch database is created and dropped) through
:meth:`server.evidence.writer.InferenceLog._write`, the writer thread's per-batch step (records
from answers, the idempotent insert of :func:`registry.evidence.insert_records` and the rollups
in its transaction), with ``--batches`` batches of ``--batch`` one-row answers spread over a few
minutes, three versions and a few latency buckets. It prints, per backend, rows/s (wall), the
writing thread's CPU per row (``time.thread_time``), split into building the rows
(:func:`server.evidence.writer.rows`: pure Python, holding the GIL) and the rest (the insert, the
rollups' upserts and the commit, where SQLite's own work runs without the GIL), and checks every
row was stored once.

Run: ``.venv/bin/python bench/bench_evidence_writer.py [--batches 40] [--batch 500]
[--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry import migrate
from registry.db import make_engine
from server.evidence import writer as writer_module
from server.evidence.records import Answer
from server.evidence.writer import InferenceLog

T0 = datetime(2030, 6, 1, tzinfo=UTC)


def answers(n: int, offset: int, rng: np.random.Generator) -> list[Answer]:
    out = []
    for i in range(n):
        k = offset + i
        probs = rng.random((1, 10), dtype=np.float32)
        out.append(Answer(
            request_id=uuid.uuid4().hex, created_at=T0 + timedelta(milliseconds=5 * k),
            model="digits", version=1 + k % 3, alias="production", caller="app:bench",
            status=200 if k % 50 else 503, latency_ms=0.2 + (k % 7) * 0.05,
            x=rng.random((1, 64), dtype=np.float32), probs=probs,
            labels=[str(int(np.argmax(probs)))],
        ))
    return out


def run(url: str, batches: int, batch: int) -> tuple[float, float, float]:
    engine = make_engine(url)
    migrate.upgrade(engine)
    writer = InferenceLog(engine, batch_size=batch)
    rng = np.random.default_rng(0)
    data = [answers(batch, b * batch, rng) for b in range(batches)]
    writer._write(data[0])  # warm-up: statement caches, connection
    wall = cpu = build = 0.0
    timed_rows = writer_module.rows

    def timed(batch: Sequence[Answer]) -> list[tuple[Any, ...]]:
        nonlocal build
        b0 = time.thread_time()
        out = timed_rows(batch)
        build += time.thread_time() - b0
        return out

    writer_module.rows = timed  # the writer's own call, timed
    try:
        for b in data[1:]:
            w0, c0 = time.perf_counter(), time.thread_time()
            writer._write(b)
            wall += time.perf_counter() - w0
            cpu += time.thread_time() - c0
    finally:
        writer_module.rows = timed_rows
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT COUNT(*) FROM inference_record")).scalar_one()
        requests = conn.execute(sa.text("SELECT SUM(requests) FROM inference_rollup")
                                ).scalar_one()
    engine.dispose()
    assert stored == batches * batch == requests, (stored, requests)
    rows = (batches - 1) * batch
    return rows / wall, cpu * 1e6 / rows, build * 1e6 / rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--postgres", default=None, help="a PostgreSQL server URL (optional)")
    args = p.parse_args()
    print(f"{'backend':<12}{'rows/s':>10}{'CPU us/row':>12}{'build':>8}{'insert':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        rps, us, build = run(f"sqlite:///{tmp}/w.db", args.batches, args.batch)
        print(f"{'sqlite':<12}{rps:>10,.0f}{us:>12.1f}{build:>8.1f}{us - build:>8.1f}")
    if args.postgres:
        name = f"bench_writer_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        try:
            url = sa.make_url(args.postgres).set(database=name)
            rps, us, build = run(url.render_as_string(hide_password=False), args.batches,
                                 args.batch)
            print(f"{'postgresql':<12}{rps:>10,.0f}{us:>12.1f}{build:>8.1f}{us - build:>8.1f}")
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            admin.dispose()


if __name__ == "__main__":
    main()

"""The inference log's inserts in a child process (server/evidence/writer_process.py): the batch
on the wire, a real child writing to a real database, and the thread taking over when the child
is gone."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from registry import migrate
from registry.db import make_engine
from registry.models.columns import utcnow
from server.evidence.records import Answer, rows
from server.evidence.writer import InferenceLog, inference_log_for
from server.evidence.writer_process import ProcessSpec, pack, unpack
from tests.server.support import make_settings


def _answer(i: int, **changes: object) -> Answer:
    answer = Answer(request_id=f"req-{i}", created_at=utcnow(), model="digits", version=1,
                    alias="production", caller="inference:app", status=200, latency_ms=0.5 + i,
                    x=np.full((1, 4), i, np.float32), probs=np.eye(1, 3, i % 3, np.float32),
                    labels=[str(i % 3)])
    for key, value in changes.items():
        setattr(answer, key, value)
    return answer


def test_a_packed_batch_makes_the_same_records() -> None:
    batch = [
        _answer(0),
        _answer(1, variant="canary", sampled=True),
        _answer(2, x=np.arange(8, dtype=np.float32).reshape(2, 4),
                probs=np.full((2, 3), 1 / 3, np.float32), labels=["0", "1"]),
        _answer(3, status=400, x=None, probs=None, labels=None),
        _answer(4, x=np.ones((1, 6), np.float32)),  # another width: arrays sent as they are
    ]
    again = unpack(pack(batch))
    assert rows(again) == rows(batch)
    # times that are not UTC travel as they are (the records refuse naive ones the same way)
    batch[0].created_at = datetime(2026, 1, 2, 3, 4, 5, 678901)
    assert unpack(pack(batch))[0].created_at == batch[0].created_at
    uniform = [_answer(i) for i in range(50)]
    assert rows(unpack(pack(uniform))) == rows(uniform)


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, sa.Engine]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    return url, engine


def _stored(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT request_id FROM inference_record")).scalars())


def test_a_child_process_writes_the_batches(db: tuple[str, sa.Engine]) -> None:
    url, engine = db
    log = InferenceLog(engine, batch_size=10, flush_interval_s=0.05, prune_interval_s=0,
                       process=ProcessSpec(url, "WARNING", "text")).start()
    try:
        for i in range(35):
            assert log.submit(_answer(i))
        assert log.flush(timeout=60)
        child = log._child
        assert child is not None and child._proc is not None
        assert child._proc.pid != os.getpid() and child._proc.poll() is None
        assert log.stats.written == 35 and log.stats.failed == 0
        assert _stored(engine) == {f"req-{i}" for i in range(35)}
    finally:
        log.stop()
    assert child._proc is None  # stopped with the writer


def test_the_child_starts_with_the_writer_before_any_batch(db: tuple[str, sa.Engine]) -> None:
    url, engine = db
    log = InferenceLog(engine, batch_size=10, flush_interval_s=0.05, prune_interval_s=0,
                       process=ProcessSpec(url, "WARNING", "text")).start()
    try:
        deadline = time.monotonic() + 60
        while log._child is None and time.monotonic() < deadline:
            time.sleep(0.05)
        child = log._child
        assert child is not None and child._proc is not None and child._proc.poll() is None
        assert log.stats.submitted == 0 and log.stats.batches == 0  # nothing was sent yet
        assert log.submit(_answer(0)) and log.flush(timeout=60)
        assert log._child is child and _stored(engine) == {"req-0"}
    finally:
        log.stop()


def test_the_thread_takes_over_when_the_child_dies(
        db: tuple[str, sa.Engine], caplog: pytest.LogCaptureFixture) -> None:
    url, engine = db
    log = InferenceLog(engine, batch_size=5, flush_interval_s=0.05, prune_interval_s=0,
                       process=ProcessSpec(url, "WARNING", "text")).start()
    try:
        for i in range(5):
            log.submit(_answer(i))
        assert log.flush(timeout=60)
        assert log._child is not None and log._child._proc is not None
        os.kill(log._child._proc.pid, signal.SIGKILL)
        log._child._proc.wait()
        with caplog.at_level(logging.WARNING, logger="edgefleet.server.evidence"):
            for i in range(5, 20):
                log.submit(_answer(i))
            assert log.flush(timeout=60)
        assert log._child is None and log.process is None
        assert any("writer process" in r.getMessage() for r in caplog.records)
        assert log.stats.written == 20 and log.stats.failed == 0
        assert _stored(engine) == {f"req-{i}" for i in range(20)}
    finally:
        log.stop()


def test_a_child_that_cannot_start_leaves_the_writing_to_the_thread(
        db: tuple[str, sa.Engine], caplog: pytest.LogCaptureFixture) -> None:
    _, engine = db
    unusable = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # nothing listens on port 1
    log = InferenceLog(engine, batch_size=3, flush_interval_s=0.05, prune_interval_s=0,
                       process=ProcessSpec(unusable, "WARNING", "text")).start()
    try:
        with caplog.at_level(logging.WARNING, logger="edgefleet.server.evidence"):
            for i in range(7):
                log.submit(_answer(i))
            assert log.flush(timeout=90)
        assert log.process is None and log.stats.written == 7
        assert _stored(engine) == {f"req-{i}" for i in range(7)}
        assert any("failed to start" in r.getMessage() for r in caplog.records)
    finally:
        log.stop()


def test_the_setting_chooses_where_batches_are_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = make_engine(url)
    on = inference_log_for(make_settings(url, tmp_path, inference_log_process=True), engine)
    assert on is not None and on.process is not None
    assert on.process == ProcessSpec(url, "INFO", on.process.log_format)
    off = inference_log_for(make_settings(url, tmp_path, inference_log_process=False), engine)
    assert off is not None and off.process is None
    memory = inference_log_for(make_settings("sqlite://", tmp_path, inference_log_process=True),
                               make_engine("sqlite://"))
    assert memory is not None and memory.process is None  # another process cannot see it


def test_the_child_imports_no_web_framework() -> None:
    """The child imports what writing needs (``server.evidence`` exports its names lazily), not
    FastAPI or Starlette through the package's other modules."""
    probe = ("import sys; from server.evidence.writer_process import main; "
             "import registry.db, server.logs; "
             "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"

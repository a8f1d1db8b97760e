"""The inference log's background writer: a bounded queue drained into the database in batches.

The V2 path calls :meth:`InferenceLog.submit` with what it answered (a few attribute copies and
one ``deque.append``: no thread is woken, so the writer does not take the GIL from the request
that woke it); one daemon thread looks at the deque every ``POLL_S``, turns
each answer into its records (hashes, sampled inputs) and inserts them in batches of up to
``batch_size`` answers, at least every ``flush_interval_s`` while there is traffic. Inserts
skip ``(request_id, row_index)`` pairs already stored (:func:`registry.evidence.insert_records`),
so a retried batch is stored once.

Loss bound: when the queue is full (the database cannot keep up), new answers are *dropped and
counted* (``LogStats.dropped``) rather than slowing requests down. :meth:`InferenceLog.stop`
(the application's shutdown) writes everything queued. A process killed without shutdown loses
what was not yet written: at most ``queue_size`` answers plus the batch being inserted, and in
steady state about ``flush_interval_s`` of traffic. A batch the database refuses three times
is dropped and counted in ``LogStats.failed``.

Retention: every ``prune_interval_s`` the same thread deletes records older than
``retention_days`` (rounded down to the hour) through :func:`registry.evidence.prune`, a
few thousand rows per transaction, so the write lock is never held for long, and then the
rollups of the same buckets (:func:`registry.rollups.prune`).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from registry import rollups
from registry.evidence import insert_records, latency_bucket, prune
from registry.models.columns import utcnow
from server.settings import ServerSettings

__all__ = ["Answer", "InferenceLog", "LogStats", "inference_log_for"]

log = logging.getLogger("edgefleet.server.evidence")

_ATTEMPTS = 3
#: How often the writer looks whether a batch is full while it waits (each look takes the GIL
#: from whatever thread runs; a batch that fills between looks waits for the next one).
POLL_S = 0.1


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs the request path
class Answer:
    """One V2 request as answered (or refused): what :meth:`InferenceLog.submit` takes.

    ``x``, ``probs`` and ``labels`` are ``None`` for a refused request (status >= 400).
    """

    request_id: str
    created_at: datetime
    model: str
    version: int
    alias: str | None
    caller: str
    status: int
    latency_ms: float
    variant: str | None = None
    x: np.ndarray | None = None
    probs: np.ndarray | None = None
    labels: list[str] | None = None
    sampled: bool = False


@dataclass
class LogStats:
    """Counters of one writer (answers, not records)."""

    submitted: int = 0
    written: int = 0
    dropped: int = 0
    failed: int = 0
    pruned: int = 0
    batches: int = 0


def records(answer: Answer) -> list[dict[str, Any]]:
    """The rows of ``answer``: one per input row, or one without outputs for a refusal."""
    base = {
        "request_id": answer.request_id,
        "created_at": answer.created_at,
        "model": answer.model,
        "version": answer.version,
        "alias": answer.alias,
        "variant": answer.variant[:64] if answer.variant else None,
        "caller": answer.caller,
        "status": answer.status,
        "latency_ms": answer.latency_ms,
        "latency_bucket": latency_bucket(answer.latency_ms),
        "label": None,
        "confidence": None,
        "input_sha256": None,
        "inputs": None,
    }
    refused = answer.status >= 400 or answer.labels is None
    if refused or answer.x is None or answer.probs is None or answer.labels is None:
        return [{**base, "row_index": 0}]
    labels = answer.labels
    x = np.ascontiguousarray(answer.x, dtype=np.float32).reshape(len(labels), -1)
    confidence = np.asarray(answer.probs).max(axis=1).tolist()
    raw, width = x.tobytes(), x.shape[1] * x.itemsize  # row i's bytes: raw[i*width:(i+1)*width]
    sampled = answer.sampled
    return [
        {
            **base,
            "row_index": i,
            "label": labels[i],
            "confidence": float(confidence[i]),
            "input_sha256": hashlib.sha256(raw[i * width : (i + 1) * width]).hexdigest(),
            "inputs": x[i].tolist() if sampled else None,
        }
        for i in range(len(labels))
    ]


@dataclass
class InferenceLog:
    """The writer (see the module notes). ``start`` it, ``submit`` answers, ``stop`` it.

    Parameters
    ----------
    engine
        The registry's database.
    sample_rate
        Share of requests whose inputs are stored (default 0: only their hash).
    retention_days
        Age after which records are pruned (default 30).
    queue_size, batch_size, flush_interval_s
        Answers held at most (default 10,000), answers per insert (500), longest wait before a
        partial batch is written (0.5 s).
    prune_interval_s, prune_batch
        Seconds between prunes (default 300) and rows deleted per transaction (5,000).
    """

    engine: Engine
    sample_rate: float = 0.0
    retention_days: float = 30.0
    queue_size: int = 10_000
    batch_size: int = 500
    flush_interval_s: float = 0.5
    prune_interval_s: float = 300.0
    prune_batch: int = 5000
    stats: LogStats = field(default_factory=LogStats)

    def __post_init__(self) -> None:
        self._queue: deque[Answer] = deque()  # appended by submit, popped by the writer only
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Condition()
        self._settled = 0  # answers written, failed or dropped (for flush)

    # --- the request path ----------------------------------------------------------------------
    def sample(self) -> bool:
        """Whether the next request's inputs are kept (``sample_rate`` of them)."""
        return self.sample_rate > 0 and random.random() < self.sample_rate

    def submit(self, answer: Answer) -> bool:
        """Queue ``answer`` without blocking; ``False`` (and counted) when the queue is full."""
        with self._done:
            self.stats.submitted += 1
        if len(self._queue) >= self.queue_size:
            with self._done:
                self.stats.dropped += 1
            self._settle(1)
            return False
        self._queue.append(answer)
        return True

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> InferenceLog:
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued, then end the thread (waits up to ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every answer submitted so far is settled; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._done:
            while self._settled < self.stats.submitted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True

    def prune_now(self) -> int:
        """Delete records older than the retention bound now, and the rollups of the same
        buckets (the cutoff is rounded down to the hour); how many records were deleted."""
        cutoff = rollups.bucket_floor(utcnow() - timedelta(days=self.retention_days),
                                      rollups.LATENCY_ROLLUP_S)
        n = prune(self.engine, cutoff, batch=self.prune_batch)
        rollups.prune(self.engine, cutoff)
        self.stats.pruned += n
        return n

    # --- the writer thread ---------------------------------------------------------------------
    def _settle(self, n: int) -> None:
        with self._done:
            self._settled += n
            self._done.notify_all()

    def _collect(self) -> list[Answer]:
        """Up to ``batch_size`` queued answers, once that many are queued or
        ``flush_interval_s`` has passed (at once when stopping)."""
        deadline = time.monotonic() + self.flush_interval_s
        while len(self._queue) < self.batch_size and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._stop.wait(min(POLL_S, left))
        queued = self._queue
        return [queued.popleft() for _ in range(min(len(queued), self.batch_size))]

    def _write(self, batch: list[Answer]) -> None:
        rows = [row for answer in batch for row in records(answer)]
        for attempt in range(_ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    insert_records(conn, rows)
            except SQLAlchemyError as exc:
                log.warning("inference log: batch of %d not written (%s)", len(batch), exc)
                if attempt + 1 < _ATTEMPTS:
                    time.sleep(0.2 * 2**attempt)
                continue
            self.stats.written += len(batch)
            self.stats.batches += 1
            self._settle(len(batch))
            return
        self.stats.failed += len(batch)
        self._settle(len(batch))

    def _run(self) -> None:
        next_prune = time.monotonic()
        while True:
            batch = self._collect()
            if batch:
                self._write(batch)
            elif self._stop.is_set():
                return
            if self.prune_interval_s > 0 and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_interval_s
                try:
                    self.prune_now()
                except SQLAlchemyError as exc:
                    log.warning("inference log: pruning failed (%s)", exc)


def inference_log_for(settings: ServerSettings, engine: Engine) -> InferenceLog | None:
    """The writer ``settings`` describe (``None`` when ``inference_log_enabled`` is off)."""
    if not settings.inference_log_enabled:
        return None
    return InferenceLog(
        engine,
        sample_rate=settings.inference_log_sample_rate,
        retention_days=settings.inference_log_retention_days,
        queue_size=settings.inference_log_queue_size,
        batch_size=settings.inference_log_batch_size,
        flush_interval_s=settings.inference_log_flush_interval_s,
        prune_interval_s=settings.inference_log_prune_interval_s,
    )

"""The inference log's background writer: a bounded queue drained into the database in batches.

The V2 path calls :meth:`InferenceLog.submit` with what it answered (a few attribute copies and
one ``deque.append``: no thread is woken, so the writer does not take the GIL from the request
that woke it); one daemon thread looks at the deque every ``POLL_S``, turns
each answer into its records (hashes, sampled inputs) and inserts them in batches of up to
``batch_size`` answers, at least every ``flush_interval_s`` while there is traffic. Inserts
skip ``(request_id, row_index)`` pairs already stored (:func:`registry.evidence.insert_rows`),
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
import itertools
import logging
import operator
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from registry import rollups
from registry.evidence import insert_rows, latency_bucket, prune
from registry.models.columns import utcnow
from server.settings import ServerSettings

__all__ = ["COLUMNS", "Answer", "InferenceLog", "LogStats", "inference_log_for", "records", "rows"]

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


#: The columns of the rows :func:`rows` builds, in their order.
COLUMNS = ("request_id", "row_index", "created_at", "model", "version", "alias", "variant",
           "caller", "status", "latency_ms", "latency_bucket", "label", "confidence",
           "input_sha256", "inputs")


def rows(batch: Sequence[Answer]) -> list[tuple[Any, ...]]:
    """The records of ``batch`` as tuples of :data:`COLUMNS`: one per input row of an answer,
    or one without outputs for a refusal.

    A batch of one-row answers, none refused or sampled (the common case), is built a column at
    a time (:func:`_single_rows`); any other batch has one head tuple per answer, the
    confidences one ``max`` per output width over the answers' probabilities stacked, and the
    input hashes one ``tobytes`` per input width.
    """
    fast = _single_rows(batch)
    if fast is not None:
        return fast
    answered = [a for a in batch if _answered(a)]
    confidence, digests = _outputs(answered)
    out: list[tuple[Any, ...]] = []
    k = 0  # index of the next answered row in confidence / digests
    for a in batch:
        head = (a.created_at, a.model, a.version, a.alias, a.variant[:64] if a.variant else None,
                a.caller, a.status, a.latency_ms, latency_bucket(a.latency_ms))
        labels = a.labels
        if labels is None or not _answered(a):
            out.append((a.request_id, 0, *head, None, None, None, None))
            continue
        x = _inputs(a) if a.sampled else None
        for i, label in enumerate(labels):
            out.append((a.request_id, i, *head, label, confidence[k], digests[k],
                        None if x is None else x[i].tolist()))
            k += 1
    return out


_FIELDS = {name: operator.attrgetter(name) for name in (
    "request_id", "created_at", "model", "version", "alias", "variant", "caller", "status",
    "latency_ms", "x", "probs", "labels", "sampled")}
_HEX = operator.methodcaller("hexdigest")


def _single_rows(batch: Sequence[Answer]) -> list[tuple[Any, ...]] | None:
    """:func:`rows` of a batch of refusals and of answered, unsampled one-row answers whose
    inputs and probabilities are rows of one width each, built a column at a time (attribute
    getters, one ``concatenate`` and ``max``, a SHA-256 per row); ``None`` for any other
    batch."""
    n = len(batch)
    if not n:
        return []
    ok = [a.status < 400 and a.labels is not None and a.x is not None and a.probs is not None
          for a in batch]
    every = all(ok)
    answered = batch if every else [a for a, k in zip(batch, ok, strict=True) if k]
    f = _FIELDS
    labels = list(map(f["labels"], answered))
    if any(map(f["sampled"], answered)) or (labels and set(map(len, labels)) != {1}):
        return None
    try:
        x = np.concatenate(list(map(f["x"], answered)), dtype=np.float32) if labels else None
        p = np.concatenate(list(map(f["probs"], answered))) if labels else None
    except (ValueError, TypeError):  # widths or dimensions differ: the general path
        return None
    if x is not None and p is not None:
        m = len(answered)
        if x.ndim != 2 or p.ndim != 2 or x.shape[0] != m or p.shape[0] != m:
            return None
        outputs: list[Any] = [list(map(operator.itemgetter(0), labels)), p.max(axis=1).tolist(),
                              list(map(_HEX, map(hashlib.sha256, x)))]
    else:
        outputs = [[], [], []]
    if not every:  # a refusal's row has no outputs
        outputs = [_spread(column, ok) for column in outputs]
    variants = list(map(f["variant"], batch))
    if any(v is not None and (len(v) > 64 or not v) for v in variants):
        variants = [v[:64] if v else None for v in variants]
    latencies = list(map(f["latency_ms"], batch))
    return list(zip(
        map(f["request_id"], batch), itertools.repeat(0, n), map(f["created_at"], batch),
        map(f["model"], batch), map(f["version"], batch), map(f["alias"], batch), variants,
        map(f["caller"], batch), map(f["status"], batch), latencies,
        map(latency_bucket, latencies), *outputs, itertools.repeat(None, n), strict=True))


def _spread(values: list[Any], present: list[bool]) -> list[Any]:
    """``values`` at the places ``present`` marks, ``None`` elsewhere."""
    it = iter(values)
    return [next(it) if k else None for k in present]


def records(answer: Answer) -> list[dict[str, Any]]:
    """The rows of ``answer`` as column → value dicts (what :func:`rows` gives, by name)."""
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows([answer])]


def _answered(a: Answer) -> bool:
    return a.status < 400 and a.labels is not None and a.x is not None and a.probs is not None


def _inputs(a: Answer) -> np.ndarray:
    """``a.x`` as float32 rows, one per label."""
    return _rows_of(a.x, len(a.labels or ())).astype(np.float32, copy=False)


def _rows_of(values: Any, n: int) -> np.ndarray:
    """``values`` as a 2-D array of ``n`` rows (as it comes, when it already is one)."""
    arr = np.asarray(values)
    return arr if arr.ndim == 2 and arr.shape[0] == n else arr.reshape(n, -1)


def _outputs(answered: list[Answer]) -> tuple[list[float], list[str]]:
    """Per answered row of ``answered`` (in order): its confidence and its input's SHA-256."""
    n = sum(len(a.labels or ()) for a in answered)
    confidence: list[float] = [0.0] * n
    digests: list[str] = [""] * n
    offsets, at = [], 0
    for a in answered:
        offsets.append(at)
        at += len(a.labels or ())
    by_width: dict[tuple[int, int], list[int]] = {}
    xs = [_rows_of(a.x, len(a.labels or ())) for a in answered]
    ps = [_rows_of(a.probs, len(a.labels or ())) for a in answered]
    for j, (x, p) in enumerate(zip(xs, ps, strict=True)):
        by_width.setdefault((x.shape[1], p.shape[1]), []).append(j)
    sha256 = hashlib.sha256
    for members in by_width.values():
        conf = np.concatenate([ps[j] for j in members]).max(axis=1).tolist()
        raw = np.concatenate([xs[j] for j in members], dtype=np.float32).tobytes()
        width = xs[members[0]].shape[1] * 4  # float32: row r's bytes are raw[r*width:(r+1)*width]
        r = 0
        for j in members:
            at = offsets[j]
            for i in range(xs[j].shape[0]):
                confidence[at + i] = conf[r]
                digests[at + i] = sha256(raw[r * width : (r + 1) * width]).hexdigest()
                r += 1
    return confidence, digests


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
        built = rows(batch)
        for attempt in range(_ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    insert_rows(conn, COLUMNS, built)
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

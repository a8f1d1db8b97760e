"""The inference log's background writer: a bounded queue drained into the database in batches.

The V2 path calls :meth:`InferenceLog.submit` with what it answered (a few attribute copies and
one ``deque.append``: no thread is woken, so the writer does not take the GIL from the request
that woke it); one daemon thread looks at the deque every ``POLL_S`` and takes batches of up
to ``batch_size`` answers, at least every ``flush_interval_s`` while there is traffic, which
become records and are inserted (:func:`server.evidence.records.write_batch`) — with
``process`` (the ``inference_log_process`` setting, on by default), in a child process, so
that the inserts never hold this process's GIL (:mod:`server.evidence.writer_process`), else
by the thread itself. Inserts skip ``(request_id, row_index)`` pairs already stored
(:func:`registry.evidence.insert_rows`), so a retried batch is stored once.

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

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from registry import rollups
from registry.evidence import prune
from registry.models.columns import utcnow
from server.evidence.records import Answer, write_batch
from server.evidence.writer_process import ProcessSpec, WriterProcess, WriterProcessError
from server.settings import ServerSettings

__all__ = ["InferenceLog", "LogStats", "inference_log_for"]

log = logging.getLogger("edgefleet.server.evidence")

#: How often the writer looks whether a batch is full while it waits (each look takes the GIL
#: from whatever thread runs; a batch that fills between looks waits for the next one).
POLL_S = 0.1


@dataclass
class LogStats:
    """Counters of one writer (answers, not records)."""

    submitted: int = 0
    written: int = 0
    dropped: int = 0
    failed: int = 0
    pruned: int = 0
    batches: int = 0


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
    process
        When given, batches are written by a child process connected to this database
        (:mod:`server.evidence.writer_process`); default: by the writer thread itself.
    """

    engine: Engine
    sample_rate: float = 0.0
    retention_days: float = 30.0
    queue_size: int = 10_000
    batch_size: int = 500
    flush_interval_s: float = 0.5
    prune_interval_s: float = 300.0
    prune_batch: int = 5000
    process: ProcessSpec | None = None
    stats: LogStats = field(default_factory=LogStats)

    def __post_init__(self) -> None:
        self._queue: deque[Answer] = deque()  # appended by submit, popped by the writer only
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Condition()
        self._counting = threading.Lock()  # submitted (a plain lock: cheaper on the request path)
        self._settled = 0  # answers written, failed or dropped (for flush)
        self._child: WriterProcess | None = None  # started by the thread (process on)

    # --- the request path ----------------------------------------------------------------------
    def sample(self) -> bool:
        """Whether the next request's inputs are kept (``sample_rate`` of them)."""
        return self.sample_rate > 0 and random.random() < self.sample_rate

    def submit(self, answer: Answer) -> bool:
        """Queue ``answer`` without blocking; ``False`` (and counted) when the queue is full."""
        with self._counting:
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
        """Write everything queued, then end the thread and the child process (waits up to
        ``timeout`` seconds for the thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._child is not None:
            self._child.stop()
            self._child = None

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
        stored = self._store(batch)
        if stored:
            self.stats.written += len(batch)
            self.stats.batches += 1
        else:
            self.stats.failed += len(batch)
        self._settle(len(batch))

    def _store(self, batch: list[Answer]) -> bool:
        """Store ``batch`` through the child process when there is one, else here."""
        if self._child is not None:
            try:
                return self._child.write(batch)
            except WriterProcessError as exc:
                self._write_here(exc)
        return write_batch(self.engine, batch)

    def _start_child(self) -> None:
        """Start the child process (``process`` on) as the thread starts, not with the first
        batch: its start (a Python process importing the registry and connecting, a second or
        more of CPU) then happens while the server starts, not on the cores serving its first
        requests. A child that cannot start leaves the writing to this thread."""
        if self.process is None:
            return
        child = WriterProcess(self.process)
        try:
            child.start()
        except WriterProcessError as exc:
            self._write_here(exc)
        else:
            self._child = child  # only once started: stop() may read it from another thread

    def _write_here(self, exc: WriterProcessError) -> None:
        """The child failed (``exc``): this thread writes every batch from now on."""
        log.warning("inference log: %s; writing in the server's process from now on", exc)
        self.process = self._child = None

    def _run(self) -> None:
        self._start_child()
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
    """The writer ``settings`` describe (``None`` when ``inference_log_enabled`` is off): with
    ``inference_log_process`` on, writing in a child process, unless the database lives in
    this process's memory."""
    if not settings.inference_log_enabled:
        return None
    process = None
    if settings.inference_log_process and make_url(settings.database_url).database not in (
            None, "", ":memory:"):
        process = ProcessSpec(settings.database_url, settings.log_level, settings.log_format)
    return InferenceLog(
        engine,
        sample_rate=settings.inference_log_sample_rate,
        retention_days=settings.inference_log_retention_days,
        queue_size=settings.inference_log_queue_size,
        batch_size=settings.inference_log_batch_size,
        flush_interval_s=settings.inference_log_flush_interval_s,
        prune_interval_s=settings.inference_log_prune_interval_s,
        process=process,
    )

"""Dynamic micro-batching of one loaded version over its pool of interpreters.

A :class:`VersionBatcher` owns one :class:`~edgefleet.runtime.PlanRuntime` per pool thread (an
interpreter runs one call at a time; TFLite releases the GIL while it computes, so several
interpreters use several cores). Batching is continuous: a request that finds every interpreter
idle and nothing queued runs at once, alone, so batching costs it nothing; requests that arrive
while a call runs queue, and the interpreter that frees up takes the queued requests in arrival
order, up to ``max_batch`` rows, as its next call, at once. A further interpreter starts a call
while others are busy only when ``parallel_rows`` rows are queued (default: a full
``max_batch``): an interpreter that keeps up with the arrivals on its own then runs batches as
large as the arrivals make them, which costs less CPU per row than several interpreters running
small batches side by side (on a machine whose cores also run the event loop, that CPU is taken
from the requests' parsing). With ``max_queue_delay_ms`` > 0, an interpreter that frees up
while fewer than ``max_batch`` rows are queued waits until the oldest of them has waited that
long, so that under load its calls are larger and cost less CPU per row; it stops waiting as
soon as the callers of its last call are back — as many rows queued as that call ran plus
those queued when it ended (a caller that sends its next request on each answer, as a client
at a fixed concurrency does, would otherwise be run alone, the first back, while the others
queue behind it: one call for a single row beside each full one). A request that finds
every interpreter idle and nothing queued waits for that delay only if the last call had company
(it held several requests, or others queued while it ran): a lone caller (concurrency 1) never
waits for a batch that would not come. Each caller gets its own rows back, in order.
A call whose estimated time is below ``inline_below_ms`` (a tiny model) runs on the event loop
itself, skipping the thread hop. The estimate per row is the wall time of the calls made inline
(each counted at most twice the estimate: the loop's thread being preempted is not the model's
cost) and the CPU time of the calls made in a worker thread (whose wall time includes waiting
for the GIL while the event loop runs: a tiny model sent there once would otherwise look slow
and never come back inline). Only calls of at most a few rows (``_ESTIMATE_ROWS``) make the
estimate: a call has a fixed cost (the heavy MLP reads its 47 MB of weights on every call) that
a large call spreads over its rows, so a per-row figure from large calls would send a lone row
of a heavy model to the event loop, which it would block for the whole fixed cost.

With ``split_rounds`` (the default), a call takes at most half of the callers expected back
(their recent peak, decaying by ``_CALLERS_DECAY`` a call) once they are at least
``2 * _SPLIT_MIN_ROWS``: the callers then form two rounds, and one interpreter runs one round
while the event loop answers the other and parses its next requests, instead of the loop and
the interpreter taking turns over one round of all of them.

A call is cut at a *preferred batch size* (``preferred_batch_sizes``, Triton's dynamic
batcher's rule): the largest one the queued rows and the limit above fill; only when the queue
fills none does the call take what is queued. A model whose call time is a staircase in its
rows (an interpreter's kernels work on tiles of rows) runs the most rows for its time at the
top of a step; by default the sizes are measured when the version loads
(:mod:`server.inference.batch_sizes`), and a model whose time grows smoothly has none. For the
heavy benchmark MLP (steps every 7 rows) at concurrency 32 the calls run 7 rows (one tile)
instead of 11 (two): a call of 11 costs what one of 14 does.

If a batched call fails, its requests are run one by one, so only a request that fails alone
fails. At most ``max_queue_rows`` rows wait; beyond that a request is refused with 503.

An interpreter that finishes a call while a full call is queued (as many rows as the next call
may take, and, with other interpreters busy, ``parallel_rows``) takes it at once in its own pool
thread: the event loop, busy answering the last call's callers and parsing the next requests,
would otherwise leave the interpreter idle until it got round to the finished call (for a heavy
model at concurrency 32 that wait was about a third of each call's time). Any other decision —
a smaller call, a queue delay, another interpreter — is the event loop's, when the finished
call's answers reach it (one ``call_soon_threadsafe`` per call). The batcher's state is shared
by the event loop and the pool threads under one lock, held only to read or change it.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.runtime import PlanRuntime
from server.errors import ModelUnavailableError

__all__ = ["BatchPolicy", "BatchingSettings", "VersionBatcher"]

_EWMA = 0.2
#: The most rows of a call whose time updates the inline estimate (module notes).
_ESTIMATE_ROWS = 4
#: ``split_rounds``: callers are split into two calls only from this many rows a call.
_SPLIT_MIN_ROWS = 8
#: ``split_rounds``: how the peak of callers expected back decays at each call.
_CALLERS_DECAY = 0.95
#: An inline call's wall time counts at most this many times the estimate it updates.
_WALL_CAP = 2.0


class BatchPolicy(BaseModel):
    """How one model's requests are batched (per model, see :class:`BatchingSettings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(default=32, ge=1, le=4096)
    max_queue_delay_ms: float = Field(default=0.0, ge=0, le=1000)
    #: Queued rows at which another interpreter starts while one is busy (0: ``max_batch``).
    parallel_rows: int = Field(default=0, ge=0, le=4096)
    #: Whether a call takes at most half of the callers expected back (module notes).
    split_rounds: bool = True
    inline_below_ms: float = Field(default=0.2, ge=0, le=100)
    max_queue_rows: int = Field(default=4096, ge=1, le=1_000_000)
    #: The sizes a call is cut at when the queue fills one (module notes); ``None``: measured
    #: when the version loads (:mod:`server.inference.batch_sizes`), ``[]``: none.
    preferred_batch_sizes: tuple[int, ...] | None = None

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sizes(cls, sizes: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if sizes is None:
            return None
        if any(n < 1 for n in sizes):
            raise ValueError("preferred batch sizes are at least 1")
        return tuple(sorted(set(sizes)))

    @model_validator(mode="after")
    def _within_max_batch(self) -> BatchPolicy:
        if self.preferred_batch_sizes and self.preferred_batch_sizes[-1] > self.max_batch:
            raise ValueError(f"a preferred batch size exceeds max_batch {self.max_batch}")
        return self


class BatchingSettings(BaseModel):
    """``{"default": {...}, "per_model": {"name": {...}}}``: the batch policy of each model."""

    model_config = ConfigDict(extra="forbid")

    default: BatchPolicy = Field(default_factory=BatchPolicy)
    per_model: dict[str, BatchPolicy] = Field(default_factory=dict)

    def for_model(self, model: str) -> BatchPolicy:
        return self.per_model.get(model, self.default)


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued_at: float


@dataclass
class BatcherStats:
    """Counters of one batcher: calls made, rows run, calls that held several requests, the
    largest call and the most calls in flight at once."""

    calls: int = 0
    rows: int = 0
    batched_calls: int = 0
    inline_calls: int = 0
    largest_batch: int = 0
    most_in_flight: int = 0


class VersionBatcher:
    """Run one version's requests on ``runtimes`` through ``executor`` (see module notes)."""

    def __init__(self, runtimes: Sequence[PlanRuntime], policy: BatchPolicy, executor: Executor
                 ) -> None:
        if not runtimes:
            raise ValueError("a batcher needs at least one runtime")
        self.policy = policy
        self._preferred = policy.preferred_batch_sizes or ()
        self.runtimes = tuple(runtimes)
        self.manifest = runtimes[0].manifest
        self.stats = BatcherStats()
        self._executor = executor
        self._lock = threading.Lock()  # the state below: the event loop and the pool threads
        self._idle = list(runtimes)
        self._busy = 0
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._ms_per_row: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._company = False  # whether the last finished call had company (module notes)
        self._last_rows = 0  # the callers expected back after the last call (module notes)
        self._callers = 0.0  # their recent peak, decaying (module notes)

    async def predict(self, x: np.ndarray) -> np.ndarray:
        """The probabilities of rows ``x`` (validated ``float32 [n, *sample_shape]``)."""
        rows = len(x)
        with self._lock:
            inline = not self._queue and self._idle and self._inline(rows)
            runtime = self._idle.pop() if inline else None
        if runtime is not None:
            return self._run_inline(runtime, x)
        loop = asyncio.get_running_loop()
        pending = _Pending(x, loop.create_future(), time.perf_counter())
        with self._lock:
            if self._queued_rows + rows > self.policy.max_queue_rows:
                raise ModelUnavailableError(
                    f"version {self.manifest.name!r} is overloaded ({self._queued_rows} rows "
                    "queued)")
            alone = not self._queue and not self._busy and not self._company
            self._queue.append(pending)
            self._queued_rows += rows
            starts = self._starts(loop, now=alone)
        self._submit(loop, starts)
        return await pending.future

    @property
    def busy(self) -> int:
        """Interpreter calls running now."""
        return self._busy

    def _run_inline(self, runtime: PlanRuntime, x: np.ndarray) -> np.ndarray:
        rows = len(x)
        started = time.perf_counter()  # no system call here (thread_time is one)
        try:
            out = runtime.predict(x)
        except BaseException:
            with self._lock:
                self._idle.append(runtime)
            raise
        seconds = time.perf_counter() - started
        with self._lock:  # once per call: this is the tiny model's request path
            self._idle.append(runtime)
            self._observe(rows, seconds, wall=True)
            self.stats.inline_calls += 1
            self._count(rows, 1)
        return out

    def _inline(self, rows: int) -> bool:
        per_row = self._ms_per_row
        return per_row is not None and per_row * rows < self.policy.inline_below_ms

    def _observe(self, rows: int, seconds: float, *, wall: bool = False) -> None:
        if rows > _ESTIMATE_ROWS:  # a large call's fixed cost is spread (module notes)
            return
        ms = seconds * 1e3 / max(rows, 1)
        current = self._ms_per_row
        if current is not None and wall:  # a preempted call is not the model's cost
            ms = min(ms, _WALL_CAP * current)
        self._ms_per_row = ms if current is None else (1 - _EWMA) * current + _EWMA * ms

    def _count(self, rows: int, requests: int) -> None:
        self.stats.calls += 1
        self.stats.rows += rows
        self.stats.largest_batch = max(self.stats.largest_batch, rows)
        if requests > 1:
            self.stats.batched_calls += 1

    def _starts(self, loop: asyncio.AbstractEventLoop, *, now: bool = False
                ) -> list[tuple[PlanRuntime, list[_Pending]]]:
        """The calls the policy starts (``now``: a request alone at an idle batcher), taken off
        the queue; a timer when it says wait. Called on the event loop, with the lock held."""
        starts = []
        while self._queue and self._idle:
            if self._busy:
                if self._queued_rows < self._parallel_rows():
                    break  # the busy call's interpreter takes the queue when it frees up
            elif not now:
                wait = self._wait_s()
                if wait > 0:
                    if self._timer is None:
                        self._timer = loop.call_later(wait, self._on_timer)
                    break
            starts.append((self._idle.pop(), self._take()))
            self._busy += 1
            self.stats.most_in_flight = max(self.stats.most_in_flight, self._busy)
        return starts

    def _submit(self, loop: asyncio.AbstractEventLoop,
                starts: list[tuple[PlanRuntime, list[_Pending]]]) -> None:
        for runtime, batch in starts:
            try:
                future = self._executor.submit(self._work, loop, runtime, batch)
            except RuntimeError as exc:  # the pool is shut down
                self._deliver(batch, [exc] * len(batch), 0.0, runtime)
            else:
                future.add_done_callback(functools.partial(self._cancelled, loop, runtime, batch))

    def _cancelled(self, loop: asyncio.AbstractEventLoop, runtime: PlanRuntime,
                   batch: list[_Pending], future: Future[None]) -> None:
        """A call the pool dropped before it ran (the pool shut down): its callers get 503."""
        if not future.cancelled():
            return
        refusal = ModelUnavailableError(f"version {self.manifest.name!r} stopped serving")
        try:
            loop.call_soon_threadsafe(self._deliver, batch, [refusal] * len(batch), 0.0,
                                      runtime)
        except RuntimeError:  # the event loop is closed
            with self._lock:
                self._hand_back(runtime)

    def _drain(self) -> None:
        """Start the calls the policy allows (on the event loop)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            starts = self._starts(loop)
        self._submit(loop, starts)

    def _parallel_rows(self) -> int:
        return self.policy.parallel_rows or self.policy.max_batch

    def _on_timer(self) -> None:
        self._timer = None
        self._drain()

    def _wait_s(self) -> float:
        """How long to keep waiting for the queue to fill a batch (0: dispatch now)."""
        delay = self.policy.max_queue_delay_ms / 1e3
        limit = self._limit()
        if delay <= 0 or self._queued_rows >= min(limit, self._last_rows or limit):
            return 0.0
        age = time.perf_counter() - self._queue[0].queued_at
        return max(0.0, delay - age)

    def _limit(self) -> int:
        """The most rows the next call takes (module notes)."""
        limit = self.policy.max_batch
        if self.policy.split_rounds and self._callers >= 2 * _SPLIT_MIN_ROWS:
            limit = min(limit, math.ceil(self._callers / 2))
        return self._cut(limit)

    def _cut(self, rows: int) -> int:
        """The largest preferred batch size up to ``rows``; ``rows`` when there is none."""
        at = bisect.bisect_right(self._preferred, rows)
        return self._preferred[at - 1] if at else rows

    def _take(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        rows = len(batch[0].x)
        limit = self._cut(min(self._limit(), self._queued_rows))
        while self._queue and rows + len(self._queue[0].x) <= limit:
            item = self._queue.popleft()
            rows += len(item.x)
            batch.append(item)
        self._queued_rows -= rows
        return batch

    def _work(self, loop: asyncio.AbstractEventLoop, runtime: PlanRuntime,
              batch: list[_Pending]) -> None:
        """A pool thread: run ``batch``, then each full call queued meanwhile (module notes)."""
        current: list[_Pending] | None = batch
        while current is not None:
            try:
                results, seconds = _run(runtime, [p.x for p in current])
            except BaseException as exc:  # not the model's refusal (_run catches those)
                results, seconds = [exc] * len(current), 0.0
            with self._lock:
                finished, current = current, self._chained()
            back = runtime if current is None else None  # handed back on the event loop
            try:
                loop.call_soon_threadsafe(self._deliver, finished, results, seconds, back)
            except RuntimeError:  # the event loop is closed: nobody waits for the answers
                return

    def _chained(self) -> list[_Pending] | None:
        """The next call of an interpreter that finished one: a full call, when one is queued
        (module notes). With the lock held, in a pool thread."""
        others = self._busy - 1
        full = self._queued_rows >= self._limit() and (
            not others or self._queued_rows >= self._parallel_rows())
        return self._take() if self._queue and full else None

    def _hand_back(self, runtime: PlanRuntime) -> None:
        """``runtime``'s call is over: it is idle again (with the lock held)."""
        self._idle.append(runtime)
        self._busy -= 1

    def _deliver(self, batch: list[_Pending], results: Sequence[np.ndarray | BaseException],
                 seconds: float = 0.0, runtime: PlanRuntime | None = None) -> None:
        """On the event loop: account for a finished call, hand ``runtime`` back (when its
        thread stopped), answer the call's callers, then start what may start."""
        rows = sum(len(p.x) for p in batch)
        with self._lock:
            if runtime is not None:
                self._hand_back(runtime)
            self._company = len(batch) > 1 or bool(self._queue)
            self._last_rows = rows + self._queued_rows
            self._callers = max(float(self._last_rows), self._callers * _CALLERS_DECAY)
            if seconds:
                self._observe(rows, seconds)
            self._count(rows, len(batch))
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():  # the caller went away
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        self._drain()


_Results = tuple[list[np.ndarray | BaseException], float]


def _run(runtime: PlanRuntime, xs: list[np.ndarray]) -> _Results:
    """Run ``xs`` as one call and split the answer; if that fails, run each alone."""
    started = time.thread_time()  # CPU time: a wait for the GIL is not the model's cost
    if len(xs) == 1:
        try:
            return [runtime.predict(xs[0])], time.thread_time() - started
        except Exception as exc:
            return [exc], 0.0
    try:
        out = runtime.predict(np.concatenate(xs))
    except Exception:
        results: list[np.ndarray | BaseException] = []
        for x in xs:
            try:
                results.append(runtime.predict(x))
            except Exception as exc:
                results.append(exc)
        return results, 0.0
    seconds = time.thread_time() - started
    bounds = np.cumsum([len(x) for x in xs])[:-1]
    return list(np.split(out, bounds)), seconds

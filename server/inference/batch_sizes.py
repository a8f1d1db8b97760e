"""The batch sizes a version runs most cheaply: where its call time steps up, measured at load.

An interpreter's matrix kernels work on the rows of a call in tiles (XNNPACK's float32 kernels
on AVX-512 take 7 rows at a time), and a model whose weights do not fit in the cache reads all
of them once per tile. The call time of such a model is a staircase: for the heavy benchmark
MLP (784 → 3072 → 3072 → 10, 47 MB of weights; ``bench/bench_serving.py``) a call of 8 rows
costs what one of 14 does and about twice one of 7. A call cut at the top of a step — a
*preferred* batch size, as Triton's dynamic batcher names it — runs the most rows for its
time: :class:`~server.inference.batcher.VersionBatcher` cuts its calls at the largest preferred
size the queue fills.

:func:`measure_call_ms` times one runtime at every batch size up to ``max_batch`` (the fastest
of several sweeps, each over every size in turn, so that a change in the machine's speed
touches all sizes alike) within a time budget; :func:`step_sizes` reads the preferred sizes off
those times; :func:`preferred_sizes` does both. A size ``n`` is preferred when every larger call
costs, above ``n``'s, at least ``STEP_ROWS`` times the mean cost of one of ``n``'s rows and at
least ``STEP_SHARE`` of ``n``'s time: a cost growing in proportion to the rows, or with a fixed
part, never has such a step, so a model without tiles gets no preferred sizes and its calls
take what is queued, as before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np

from edgefleet.runtime import PlanRuntime

__all__ = ["measure_call_ms", "preferred_sizes", "step_sizes"]

log = logging.getLogger("edgefleet.server.serving")

#: A step above size ``n`` is at least this many times the mean cost of a row of ``n``.
STEP_ROWS = 2.0
#: ... and at least this share of ``n``'s call time.
STEP_SHARE = 0.1
#: The sweeps over every batch size that make the measurement: at most, and at least (fewer
#: fit in the budget: nothing is measured).
MAX_SWEEPS, MIN_SWEEPS = 10, 3
#: The time a measurement may take, in seconds.
BUDGET_S = 1.0


def step_sizes(call_ms: Sequence[float]) -> tuple[int, ...]:
    """The preferred batch sizes read off ``call_ms`` (the time of a call of ``i + 1`` rows at
    index ``i``; see the module notes). The largest size is never one: no step is seen above
    it."""
    sizes = []
    cheapest_above = math.inf  # the cheapest call of more rows than n
    for n in range(len(call_ms) - 1, 0, -1):
        cheapest_above = min(cheapest_above, call_ms[n])
        cost = call_ms[n - 1]
        step = cheapest_above - cost
        if cost > 0 and step >= STEP_ROWS * cost / n and step >= STEP_SHARE * cost:
            sizes.append(n)
    return tuple(sorted(sizes))


def measure_call_ms(runtime: PlanRuntime, max_batch: int, budget_s: float = BUDGET_S
                    ) -> list[float] | None:
    """The time, in ms, of a call of each batch size from 1 to ``max_batch`` on ``runtime``
    (the fastest of several sweeps; module notes), or ``None`` when fewer than
    ``MIN_SWEEPS`` sweeps fit in ``budget_s``."""
    shape = runtime.manifest.input.sample_shape
    x = np.random.default_rng(0).random((max_batch, *shape), dtype=np.float32)
    for n in (1, max_batch):  # warm up: the first calls allocate the interpreter's tensors
        runtime.predict(x[:n])
    sweep_s = (_call_s(runtime, x[:1]) + _call_s(runtime, x)) / 2 * max_batch
    sweeps = min(MAX_SWEEPS, int(budget_s / max(sweep_s, 1e-9)))
    if sweeps < MIN_SWEEPS:
        return None
    best = [math.inf] * max_batch
    for _ in range(sweeps):
        for n in range(1, max_batch + 1):
            best[n - 1] = min(best[n - 1], _call_s(runtime, x[:n]) * 1e3)
    return best


def preferred_sizes(runtime: PlanRuntime, max_batch: int, name: str,
                    budget_s: float = BUDGET_S) -> tuple[int, ...]:
    """The preferred batch sizes of ``runtime`` up to ``max_batch``, measured (module notes);
    none when the measurement does not fit in ``budget_s`` or a call fails. ``name`` names the
    version in the log line that reports them."""
    if max_batch < 2:
        return ()
    started = time.perf_counter()
    try:
        call_ms = measure_call_ms(runtime, max_batch, budget_s)
    except Exception as exc:  # the version still serves, cutting its calls at no size
        log.warning("%s: batch sizes not measured: %s", name, exc)
        return ()
    if call_ms is None:
        log.info("%s: batch sizes not measured (a sweep of %d sizes exceeds %.1f s / %d); "
                 "set preferred_batch_sizes in its batch policy", name, max_batch, budget_s,
                 MIN_SWEEPS)
        return ()
    sizes = step_sizes(call_ms)
    log.info("%s: preferred batch sizes %s (measured in %.2f s)", name,
             ", ".join(map(str, sizes)) or "none", time.perf_counter() - started)
    return sizes


def _call_s(runtime: PlanRuntime, x: np.ndarray) -> float:
    started = time.perf_counter()
    runtime.predict(x)
    return time.perf_counter() - started

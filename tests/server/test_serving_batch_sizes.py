"""Preferred batch sizes: read off a version's call times, measured as it loads, cut calls at.

The reading is checked on call-time curves of known shape (a staircase, with noise and an
outlier; smooth growth with and without a fixed part); the measurement on a real interpreter
(the digits plan) within its budget; the pool measures a version whose policy leaves the sizes
to it and keeps sizes a policy gives; the batcher cuts its calls at the largest preferred size
the queue fills, and takes what is queued when it fills none.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from pydantic import ValidationError

from edgefleet.plan import PlanManifest, weights_from_bytes
from edgefleet.runtime import PlanRuntime
from server.inference.batch_sizes import measure_call_ms, preferred_sizes, step_sizes
from server.inference.batcher import BatchPolicy, VersionBatcher
from server.inference.pool import RuntimePool
from tests.registry.support import PlanFiles
from tests.server.support import Api


def _staircase(tile: int, rows: int, step_ms: float = 1.8, fixed_ms: float = 0.2
               ) -> list[float]:
    """The call time of 1 to ``rows`` rows when each ``tile`` rows cost ``step_ms``."""
    return [fixed_ms + step_ms * math.ceil(n / tile) for n in range(1, rows + 1)]


def test_a_staircase_prefers_the_top_of_each_step() -> None:
    assert step_sizes(_staircase(7, 32)) == (7, 14, 21, 28)
    assert step_sizes(_staircase(4, 16)) == (4, 8, 12)
    assert step_sizes(_staircase(8, 8)) == ()  # no step is seen above the largest size


def test_noise_and_an_outlier_do_not_move_the_steps() -> None:
    rng = np.random.default_rng(3)
    noisy = [t * (1 + rng.uniform(-0.05, 0.05)) for t in _staircase(7, 32)]
    noisy[14] *= 1.4  # one slow call of 15 rows: 15 is not the top of a step
    assert step_sizes(noisy) == (7, 14, 21, 28)


def test_smooth_growth_has_no_preferred_size() -> None:
    assert step_sizes([0.003 + 0.0002 * n for n in range(1, 33)]) == ()  # a fixed part
    assert step_sizes([0.25 * n for n in range(1, 33)]) == ()  # in proportion to the rows


def _runtime(files: PlanFiles) -> PlanRuntime:
    manifest = PlanManifest.from_json(files.manifest)
    weights = weights_from_bytes(files.weights, manifest=manifest)
    return PlanRuntime.from_bytes(files.plan, manifest, weights)


def test_a_real_interpreter_is_timed_at_every_size_within_the_budget(
        plan_files: PlanFiles) -> None:
    runtime = _runtime(plan_files)
    call_ms = measure_call_ms(runtime, 16, budget_s=0.5)
    assert call_ms is not None and len(call_ms) == 16
    assert all(0 < t < 500 for t in call_ms)
    assert measure_call_ms(runtime, 16, budget_s=0.0) is None  # no sweep fits: not measured
    assert preferred_sizes(runtime, 16, "digits", budget_s=0.0) == ()
    assert preferred_sizes(runtime, 1, "digits") == ()  # one size: nothing to prefer
    sizes = preferred_sizes(runtime, 16, "digits", budget_s=0.5)
    assert all(1 <= n < 16 for n in sizes)


def test_a_version_whose_calls_fail_while_measured_gets_no_preferred_size(
        plan_files: PlanFiles, caplog: pytest.LogCaptureFixture) -> None:
    runtime = _runtime(plan_files)
    predict = runtime.predict
    calls = 0

    def failing_late(x: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls > 3:  # after the warm-up: mid-sweep
            raise RuntimeError("interpreter fault")
        return predict(x)

    runtime.predict = failing_late  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="edgefleet.server.serving"):
        assert preferred_sizes(runtime, 8, "version 1 of 'digits'", budget_s=0.5) == ()
    assert "not measured: interpreter fault" in caplog.text


def test_a_policy_orders_its_sizes_and_keeps_them_within_max_batch() -> None:
    assert BatchPolicy(max_batch=32, preferred_batch_sizes=(14, 7, 7)).preferred_batch_sizes \
        == (7, 14)
    assert BatchPolicy().preferred_batch_sizes is None  # measured when the version loads
    with pytest.raises(ValidationError, match="exceeds max_batch"):
        BatchPolicy(max_batch=8, preferred_batch_sizes=(4, 12))
    with pytest.raises(ValidationError, match="at least 1"):
        BatchPolicy(preferred_batch_sizes=(0,))


def test_the_pool_measures_the_sizes_a_policy_leaves_to_it_and_keeps_given_ones(
        api: Api) -> None:
    api.production()
    source = api.client.app.state.edgefleet.serving.pool.source  # type: ignore[attr-defined]
    version = source.entry("digits").versions[1]
    given = BatchPolicy(max_batch=16, preferred_batch_sizes=(5, 10))
    policies = []
    for policy in (BatchPolicy(max_batch=16), given):
        pool = RuntimePool(source, policy_for={"digits": policy}.__getitem__, threads=1)
        try:
            policies.append(asyncio.run(pool.get(version)).policy)
        finally:
            pool.close()
    measured, kept = policies
    assert measured.preferred_batch_sizes is not None  # measured: a tuple, maybe empty
    assert all(1 <= n < 16 for n in measured.preferred_batch_sizes)
    assert measured.max_batch == 16
    assert kept == given


@pytest.mark.parametrize(("preferred", "calls"), [
    ((4,), [1, 4, 4, 2]),  # the queue fills 4 twice, then takes the 2 left
    ((3, 6), [1, 6, 3, 1]),  # the largest size the queue fills, then the next
    ((), [1, 8, 2]),  # no preferred size: what is queued, up to max_batch
])
def test_calls_are_cut_at_the_largest_preferred_size_the_queue_fills(
        plan_files: PlanFiles, digits_data, preferred: tuple[int, ...], calls: list[int]  # type: ignore[no-untyped-def]
) -> None:
    runtime = _runtime(plan_files)
    reference = _runtime(plan_files)
    pool_x = np.asarray(digits_data.x_test, dtype=np.float32)
    xs = [pool_x[i : i + 1] for i in range(11)]
    sizes: list[int] = []
    predict = runtime.predict

    def recording(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return predict(x)

    runtime.predict = recording  # type: ignore[method-assign]
    policy = BatchPolicy(max_batch=8, split_rounds=False, inline_below_ms=0,
                         preferred_batch_sizes=preferred)
    with ThreadPoolExecutor(1) as pool:
        batcher = VersionBatcher([runtime], policy, pool)

        async def run() -> list[np.ndarray]:
            return list(await asyncio.gather(*(batcher.predict(x) for x in xs)))

        results = asyncio.run(run())
    assert sizes == calls  # the first runs alone; ten queue behind it
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)

"""Micro-batching: each caller gets its own rows, in order; a failing request fails alone.

The batcher runs real interpreters (the digits plan) on a real thread pool. With a queue delay,
requests submitted together are run as shared interpreter calls; without one, a request that
finds an idle interpreter runs alone at once, the requests that arrive while it runs share the
next call, a second interpreter starts only for a full batch, and a tiny model runs on the event
loop.
The HTTP half sends concurrent requests of different sizes through the server's route.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from edgefleet.plan import PlanManifest, weights_from_bytes
from edgefleet.runtime import PlanRuntime
from server.errors import ModelUnavailableError
from server.inference.batcher import BatchingSettings, BatchPolicy, VersionBatcher
from server.main import create_app
from server.settings import ServerSettings
from tests.registry.support import PlanFiles
from tests.server.support import APP_KEY, Api

APP = {"Authorization": f"Bearer {APP_KEY}"}


def _runtimes(files: PlanFiles, n: int) -> list[PlanRuntime]:
    manifest = PlanManifest.from_json(files.manifest)
    weights = weights_from_bytes(files.weights, manifest=manifest)
    return [PlanRuntime.from_bytes(files.plan, manifest, weights) for _ in range(n)]


def _requests(digits_data, count: int) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    pool = np.asarray(digits_data.x_test, dtype=np.float32)
    return [pool[i : i + 1 + i % 5] for i in range(count)]  # 1 to 5 rows each


def test_batched_callers_get_their_own_rows_in_order(plan_files: PlanFiles, digits_data) -> None:  # type: ignore[no-untyped-def]
    reference = _runtimes(plan_files, 1)[0]
    xs = _requests(digits_data, 60)
    policy = BatchPolicy(max_batch=32, max_queue_delay_ms=20, inline_below_ms=0)
    with ThreadPoolExecutor(2) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 2), policy, pool)

        async def run() -> list[np.ndarray]:
            return await asyncio.gather(*(batcher.predict(x) for x in xs))

        results = asyncio.run(run())
    for x, got in zip(xs, results, strict=True):
        assert got.shape == (len(x), reference.manifest.output.n_classes)
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)
    stats = batcher.stats
    assert stats.rows == sum(len(x) for x in xs)
    assert stats.batched_calls >= 1 and stats.calls < len(xs)
    assert stats.largest_batch <= 32


def test_one_failing_request_does_not_fail_its_batch(plan_files: PlanFiles, digits_data) -> None:  # type: ignore[no-untyped-def]
    reference = _runtimes(plan_files, 1)[0]
    xs = _requests(digits_data, 9)
    bad = np.zeros((2, 3), dtype=np.float32)  # the wrong width: the interpreter refuses it
    policy = BatchPolicy(max_batch=64, max_queue_delay_ms=20, inline_below_ms=0)
    with ThreadPoolExecutor(1) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 1), policy, pool)

        async def run() -> list[np.ndarray | BaseException]:
            calls = [batcher.predict(x) for x in xs[:4]] + [batcher.predict(bad)] + [
                batcher.predict(x) for x in xs[4:]]
            return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(run())
    assert isinstance(results[4], Exception)
    good = results[:4] + results[5:]
    for x, got in zip(xs, good, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)


def _submit_together(batcher: VersionBatcher, xs: list[np.ndarray]) -> list[np.ndarray]:
    """``xs`` submitted in one turn of the event loop (before any call can finish)."""
    async def run() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.predict(x) for x in xs))

    return asyncio.run(run())


def test_requests_arriving_during_a_call_share_the_next_call(
    plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    reference = _runtimes(plan_files, 1)[0]
    xs = [x[:1] for x in _requests(digits_data, 6)]
    policy = BatchPolicy(max_batch=8, inline_below_ms=0)
    with ThreadPoolExecutor(2) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 2), policy, pool)
        results = _submit_together(batcher, xs)
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)
    # the first runs alone at once; the five queued behind it are one call, on the interpreter
    # that frees up: the idle second interpreter is not started for less than a full batch
    stats = batcher.stats
    assert (stats.calls, stats.batched_calls, stats.largest_batch) == (2, 1, 5)
    assert stats.most_in_flight == 1


def test_a_full_batch_starts_another_interpreter(plan_files: PlanFiles, digits_data) -> None:  # type: ignore[no-untyped-def]
    reference = _runtimes(plan_files, 1)[0]
    xs = [x[:1] for x in _requests(digits_data, 10)]
    with ThreadPoolExecutor(2) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 2),
                                 BatchPolicy(max_batch=8, inline_below_ms=0), pool)
        results = _submit_together(batcher, xs)
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)
    # 1 alone, then 8 queued (a full batch) on the second interpreter, then the last one
    stats = batcher.stats
    assert (stats.calls, stats.rows, stats.largest_batch, stats.most_in_flight) == (3, 10, 8, 2)


def test_parallel_rows_starts_another_interpreter_before_a_full_batch(
    plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    xs = [x[:1] for x in _requests(digits_data, 4)]
    with ThreadPoolExecutor(2) as pool:
        batcher = VersionBatcher(
            _runtimes(plan_files, 2),
            BatchPolicy(max_batch=8, parallel_rows=2, inline_below_ms=0), pool)
        _submit_together(batcher, xs)
    # 1 alone, then 2 queued on the second interpreter, then the last one
    stats = batcher.stats
    assert (stats.calls, stats.largest_batch, stats.most_in_flight) == (3, 2, 2)


def test_the_queue_delay_fills_calls_under_load_but_never_delays_a_lone_request(
    plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    reference = _runtimes(plan_files, 1)[0]
    xs = [x[:1] for x in _requests(digits_data, 4)]
    policy = BatchPolicy(max_batch=8, max_queue_delay_ms=1000, inline_below_ms=0)
    with ThreadPoolExecutor(1) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 1), policy, pool)

        async def run() -> tuple[int, list[np.ndarray]]:
            # all three start in one turn of the loop, before the first call can be answered
            first = asyncio.create_task(batcher.predict(xs[0]))
            queued = [asyncio.create_task(batcher.predict(x)) for x in xs[1:3]]
            await asyncio.sleep(0)
            started_at_once = batcher.stats.most_in_flight  # no timer: nothing would join it
            out = [await first]
            # the interpreter is free, but the two queued wait for the delay, and a request
            # arriving meanwhile joins their call
            queued.append(asyncio.create_task(batcher.predict(xs[3])))
            out += await asyncio.gather(*queued)
            return started_at_once, out

        started_at_once, results = asyncio.run(run())
    assert started_at_once == 1
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)
    stats = batcher.stats
    assert (stats.calls, stats.largest_batch, stats.batched_calls) == (2, 3, 1)


def test_the_queue_delay_ends_when_the_last_calls_callers_are_back(
    plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    reference = _runtimes(plan_files, 1)[0]
    xs = [x[:1] for x in _requests(digits_data, 5)]
    policy = BatchPolicy(max_batch=8, max_queue_delay_ms=1000, inline_below_ms=0)
    with ThreadPoolExecutor(1) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 1), policy, pool)

        async def run() -> tuple[int, int, list[np.ndarray]]:
            # the first runs alone at once; the three queue behind it in the same turn
            first = asyncio.create_task(batcher.predict(xs[0]))
            queued = [asyncio.create_task(batcher.predict(x)) for x in xs[1:4]]
            await asyncio.sleep(0)
            out = [await first]
            # three queued, one answered: the interpreter waits for that caller to come back
            waiting = batcher.busy
            queued.append(asyncio.create_task(batcher.predict(xs[4])))
            await asyncio.sleep(0)
            started = batcher.busy  # it is back: the four run now, not after the delay
            out += await asyncio.gather(*queued)
            return waiting, started, out

        waiting, started, results = asyncio.run(run())
    assert (waiting, started) == (0, 1)
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)
    stats = batcher.stats
    assert (stats.calls, stats.largest_batch, stats.batched_calls) == (2, 4, 1)


def test_an_idle_interpreter_runs_a_request_alone_and_a_tiny_model_inline(
    plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    reference = _runtimes(plan_files, 1)[0]
    x = _requests(digits_data, 1)[0]
    with ThreadPoolExecutor(1) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 1), BatchPolicy(inline_below_ms=50), pool)

        async def run() -> list[np.ndarray]:
            return [await batcher.predict(x) for _ in range(5)]

        results = asyncio.run(run())
    for got in results:
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)
    # the first call measures the model in a thread; the digits MLP then runs on the loop
    assert batcher.stats.calls == 5 and batcher.stats.batched_calls == 0
    assert batcher.stats.inline_calls == 4


def test_a_large_call_does_not_make_a_lone_row_look_cheap(
    plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    rows = np.asarray(digits_data.x_test[:8], dtype=np.float32)
    with ThreadPoolExecutor(1) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 1), BatchPolicy(inline_below_ms=50), pool)

        async def run() -> list[int]:
            inline = []
            for x in (rows, rows[:1], rows[:1]):
                await batcher.predict(x)
                inline.append(batcher.stats.inline_calls)
            return inline

        inline = asyncio.run(run())
    # the 8-row call says nothing of a lone row's cost: that one runs in a thread and is
    # measured; the next lone row then runs on the loop
    assert inline == [0, 0, 1]


@pytest.mark.parametrize(("split", "calls", "largest"), [(True, 3, 10), (False, 2, 19)])
def test_split_rounds_halve_the_callers_expected_back(
    plan_files: PlanFiles, digits_data, split: bool, calls: int, largest: int  # type: ignore[no-untyped-def]
) -> None:
    reference = _runtimes(plan_files, 1)[0]
    xs = [x[:1] for x in _requests(digits_data, 20)]
    policy = BatchPolicy(max_batch=32, split_rounds=split, inline_below_ms=0)
    with ThreadPoolExecutor(1) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 1), policy, pool)
        results = _submit_together(batcher, xs)
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)
    # the first runs alone; 20 callers are then expected back: split, they run as 10 and 9
    stats = batcher.stats
    assert (stats.calls, stats.largest_batch, stats.rows) == (calls, largest, 20)


def test_an_interpreter_runs_a_full_queued_call_without_waiting_for_the_event_loop(
    plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    reference = _runtimes(plan_files, 1)[0]
    xs = [x[:1] for x in _requests(digits_data, 5)]
    runtime = _runtimes(plan_files, 1)[0]
    started: list[int] = []
    queued = threading.Event()  # the first call waits until the others are queued
    predict = runtime.predict

    def recording(x: np.ndarray) -> np.ndarray:
        started.append(len(x))
        queued.wait(10)
        return predict(x)

    runtime.predict = recording  # type: ignore[method-assign]
    policy = BatchPolicy(max_batch=4, split_rounds=False, inline_below_ms=0)
    with ThreadPoolExecutor(1) as pool:
        batcher = VersionBatcher([runtime], policy, pool)

        async def run() -> tuple[list[int], list[np.ndarray]]:
            tasks = [asyncio.create_task(batcher.predict(x)) for x in xs]
            await asyncio.sleep(0)  # the first runs alone; a full call of four queues
            queued.set()
            deadline = time.monotonic() + 10
            while len(started) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # the event loop is blocked: only the pool thread moves
            seen = list(started)
            return seen, list(await asyncio.gather(*tasks))

        seen, results = asyncio.run(run())
    assert seen == [1, 4]
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, reference.predict(x), rtol=1e-5, atol=1e-6)
    assert (batcher.stats.calls, batcher.stats.rows) == (2, 5)


def test_calls_the_pool_drops_at_shutdown_are_refused_not_left_waiting(
    plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    xs = [x[:1] for x in _requests(digits_data, 3)]
    first, second = _runtimes(plan_files, 2)
    gate = threading.Event()
    predict = first.predict

    def held(x: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return predict(x)

    first.predict = held  # type: ignore[method-assign]
    policy = BatchPolicy(max_batch=1, inline_below_ms=0)
    pool = ThreadPoolExecutor(1)  # one thread for two interpreters: the second call waits
    batcher = VersionBatcher([second, first], policy, pool)  # ``first`` is taken first

    async def run() -> list[np.ndarray | BaseException]:
        tasks = [asyncio.create_task(batcher.predict(x)) for x in xs[:2]]
        await asyncio.sleep(0)
        pool.shutdown(wait=False, cancel_futures=True)  # drops the second call, not yet run
        gate.set()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    results = asyncio.run(run())
    pool.shutdown(wait=True)
    assert isinstance(results[0], np.ndarray)
    assert isinstance(results[1], ModelUnavailableError), results[1]
    assert "stopped serving" in str(results[1])
    assert sorted(map(id, batcher._idle)) == sorted(map(id, (first, second)))


def test_a_full_queue_is_refused_with_503(plan_files: PlanFiles, digits_data) -> None:  # type: ignore[no-untyped-def]
    xs = _requests(digits_data, 6)
    policy = BatchPolicy(max_queue_delay_ms=50, inline_below_ms=0, max_queue_rows=6)
    with ThreadPoolExecutor(1) as pool:
        batcher = VersionBatcher(_runtimes(plan_files, 1), policy, pool)

        async def run() -> list[np.ndarray | BaseException]:
            return await asyncio.gather(*(batcher.predict(x) for x in xs),
                                        return_exceptions=True)

        results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, Exception)]
    assert refused and all("overloaded" in str(r) for r in refused)
    assert any(isinstance(r, np.ndarray) for r in results)


def test_policies_are_per_model() -> None:
    settings = BatchingSettings.model_validate(
        {"default": {"max_batch": 8}, "per_model": {"heavy": {"max_batch": 64,
                                                             "max_queue_delay_ms": 2}}})
    assert settings.for_model("heavy").max_batch == 64
    assert settings.for_model("other").max_batch == 8
    with pytest.raises(ValueError, match="max_batch"):
        BatchingSettings.model_validate({"default": {"max_batch": 0}})


def test_concurrent_http_callers_get_their_own_rows(
    api: Api, settings: ServerSettings, plan_files: PlanFiles, digits_data  # type: ignore[no-untyped-def]
) -> None:
    api.production()
    reference = _runtimes(plan_files, 1)[0]
    xs = _requests(digits_data, 40)
    batching = {"default": {"max_batch": 16, "max_queue_delay_ms": 10, "inline_below_ms": 0}}
    app = create_app(settings.model_copy(update={"batching": batching}))

    async def run() -> list[httpx.Response]:
        state = app.state.edgefleet
        state.serving.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await asyncio.gather(*(client.post(
                    "/v2/models/digits/infer", headers=APP,
                    json={"id": f"r{i}", "inputs": [{"name": "x", "shape": list(x.shape),
                                                     "datatype": "FP32",
                                                     "data": x.ravel().tolist()}]})
                    for i, x in enumerate(xs)))
        finally:
            state.serving.stop()

    responses = asyncio.run(run())
    for i, (x, r) in enumerate(zip(xs, responses, strict=True)):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == f"r{i}"
        probs = next(o for o in body["outputs"] if o["datatype"] == "FP32")
        assert probs["shape"] == [len(x), 10]
        np.testing.assert_allclose(np.asarray(probs["data"]).reshape(len(x), -1),
                                   reference.predict(x), rtol=1e-5, atol=1e-6)

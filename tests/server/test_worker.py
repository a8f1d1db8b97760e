"""Model-on-demand: broker workers on real Redis Streams and NATS JetStream, real databases.

In-process workers (a task of the test's loop) cover results, dead letters, alias following and
redelivery; worker *processes* cover SIGKILL mid-batch and two workers sharing one stream.
Every test uses its own streams (see ``tests/server/broker_support.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from edgefleet.datasets import Dataset
from edgefleet.ondemand import OnDemandClient, OnDemandError, ResultTimeout, broker_kind
from server.precompute.resolve import make_service
from server.worker import Worker, WorkerConfig, open_broker
from tests.server.broker_support import BrokerCase, ServedModel
from tests.server.worker_support import (
    GROUP,
    WorkerProcess,
    pending_of,
    publish_raw,
    read_dead_letters,
    read_results,
    request_body,
    result_count,
    running_worker,
    wait_until,
)


def rows(data: Dataset, n: int, start: int = 0) -> np.ndarray:
    x = np.concatenate([data.x_test, data.x_train])
    return x[start : start + n]


def test_results_name_their_version_and_match_the_model(
    broker: BrokerCase, served_model: ServedModel, digits_data: Dataset
) -> None:
    x = rows(digits_data, 60)

    async def scenario() -> None:
        async with running_worker(broker, served_model, max_batch=16, max_wait_s=0.01) as worker:
            async with OnDemandClient.connect(broker.url, "digits", streams=broker.streams) as c:
                ids = [await c.request([row.tolist()]) for row in x[:50]]
                many = await c.request(x[50:].tolist())  # one request, ten rows
                results = [await c.result(i, timeout=20) for i in ids]
                multi = await c.result(many, timeout=20)
            assert worker.stats.batches < 50  # requests were batched
        expected = served_model.expected(1, x)
        for i, r in enumerate(results):
            assert (r.version, r.alias, r.model, r.error) == (1, "production", "digits", None)
            np.testing.assert_allclose(r.probabilities[0], expected[i], rtol=1e-5, atol=1e-6)
            assert r.labels == [str(int(np.argmax(expected[i])))]
        np.testing.assert_allclose(multi.probabilities, expected[50:], rtol=1e-5, atol=1e-6)
        assert await result_count(broker) == 51
        assert await pending_of(broker) == 0

    asyncio.run(scenario())


def test_malformed_requests_go_to_the_dead_letter_stream_and_the_worker_goes_on(
    broker: BrokerCase, served_model: ServedModel, digits_data: Dataset
) -> None:
    x = rows(digits_data, 5)
    garbage = [
        b"not json at all",
        b'{"inputs": [[1.0]]}',  # no id
        request_body("narrow-1", [[1.0, 2.0, 3.0]]),  # 3 features, the plan takes 64
        request_body("bad id with spaces", x[:1].tolist()),
        b'{"id": "empty-1", "inputs": []}',
    ]

    async def scenario() -> None:
        async with running_worker(broker, served_model) as worker:
            await publish_raw(broker, garbage)
            async with OnDemandClient.connect(broker.url, "digits", streams=broker.streams) as c:
                narrow = await c.result("narrow-1", timeout=20)
                ok = [await c.result(await c.request([r.tolist()]), timeout=20) for r in x]
            await wait_until(lambda: worker.stats.dead_letters == len(garbage))
        assert [r.version for r in ok] == [1] * 5 and all(r.error is None for r in ok)
        assert narrow.error is not None and "64 features" in narrow.error
        assert narrow.version == 1 and narrow.probabilities == []
        letters = await read_dead_letters(broker)
        assert sorted(d["data"] for d in letters) == sorted(g.decode() for g in garbage)
        reasons = {d["data"]: d["reason"] for d in letters}
        assert "malformed request" in reasons["not json at all"]
        assert "64 features" in reasons[garbage[2].decode()]
        assert await pending_of(broker) == 0  # dead letters are acknowledged too

    asyncio.run(scenario())


def test_the_worker_follows_the_alias_without_losing_a_message(
    broker: BrokerCase, served_model: ServedModel, digits_data: Dataset
) -> None:
    x = rows(digits_data, 300)

    async def scenario() -> None:
        async with (
            running_worker(broker, served_model, refresh_s=0.1, max_batch=8) as worker,
            OnDemandClient.connect(broker.url, "digits", streams=broker.streams) as c,
        ):
            ids: list[str] = []
            for i, row in enumerate(x):
                ids.append(await c.request([row.tolist()]))
                if i == 100:
                    served_model.move_production(2)
                if i % 10 == 0:
                    await asyncio.sleep(0.01)
            await wait_until(lambda: worker.target is not None and worker.target.version == 2)
            late = await c.request([x[0].tolist()])
            results = [await c.result(i, timeout=30) for i in [*ids, late]]
        versions = [r.version or 0 for r in results]
        assert set(versions) == {1, 2} and versions[-1] == 2
        assert versions == sorted(versions)  # swapped once, between batches
        assert worker.stats.versions == [1, 2]
        for r, row in zip(results, [*x, x[0]], strict=True):
            expected = served_model.expected(r.version or 0, row[None, :])[0]
            np.testing.assert_allclose(r.probabilities[0], expected, rtol=1e-5, atol=1e-6)
        assert await result_count(broker) == len(ids) + 1

    asyncio.run(scenario())


def test_a_redelivered_request_is_answered_once(
    broker: BrokerCase, served_model: ServedModel, digits_data: Dataset
) -> None:
    """Worker A writes a batch's results and dies before acknowledging; B gets the batch again
    and writes nothing new."""
    x = rows(digits_data, 12)

    async def scenario() -> None:
        crashed = open_broker(broker.url, broker.streams, group=GROUP, consumer="w-crashed",
                              claim_idle_s=1.0, result_ttl_s=600)
        worker = Worker(WorkerConfig(model="digits", claim_idle_s=1.0), crashed,
                        served_model.engine, make_service(served_model.settings))
        await worker.start()
        bodies = [request_body(f"r{i}", [row.tolist()]) for i, row in enumerate(x)]
        await publish_raw(broker, bodies)
        batch = await crashed.read(32, 0.2, 5.0)
        assert len(batch) == len(x)

        async def crash_before_ack(_: object) -> None:
            return None

        crashed.ack = crash_before_ack  # type: ignore[method-assign,assignment]
        await worker.handle(batch)  # results written, nothing acknowledged
        assert worker.stats.results_written == len(x)
        await crashed.close()
        first = {r.id: r for r in await read_results(broker)}
        assert len(first) == len(x)
        async with running_worker(broker, served_model, "w-b", claim_idle_s=1.0) as b:
            await wait_until(lambda: b.stats.requests >= len(x), timeout=30)
        assert b.stats.duplicates == len(x) and b.stats.results_written == 0
        assert await result_count(broker) == len(x)
        assert {r.id: r for r in await read_results(broker)} == first
        assert await pending_of(broker) == 0

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.parametrize("backend_broker", ["redis", "nats"])
def test_a_worker_killed_mid_batch_loses_no_request(
    backend_broker: str,
    request: pytest.FixtureRequest,
    served_model: ServedModel,
    digits_data: Dataset,
    tmp_path: Path,
) -> None:
    """SIGKILL a worker process while it holds unacknowledged requests: a second worker answers
    every request, each exactly once, with the model's own result."""
    from tests.server.broker_support import make_case

    cases = make_case(backend_broker)
    case = next(cases)
    request.addfinalizer(lambda: next(cases, None))
    x = rows(digits_data, 240)
    claim = ["--claim-idle-s", "1", "--max-batch", "16", "--max-wait-ms", "150"]

    async def scenario() -> None:
        a = WorkerProcess(case, served_model, "w-killed", tmp_path, *claim)
        b: WorkerProcess | None = None
        try:
            await a.ready()
            async with OnDemandClient.connect(case.url, "digits", streams=case.streams) as c:
                ids = []
                for i, row in enumerate(x):
                    ids.append(await c.request([row.tolist()]))
                    await asyncio.sleep(0.004)
                    if i == 120:
                        await wait_until(lambda: pending_of(case, "w-killed"), timeout=30)
                        a.kill()
                        held = await pending_of(case, "w-killed" if case.kind == "redis" else None)
                        b = WorkerProcess(case, served_model, "w-rescuer", tmp_path, *claim)
                results = [await c.result(i, timeout=60) for i in ids]
            assert held > 0  # killed with a batch in hand
        finally:
            a.stop()
            log = b.stop() if b is not None else ""
        expected = served_model.expected(1, x)
        for i, r in enumerate(results):
            assert r.version == 1 and r.error is None
            np.testing.assert_allclose(r.probabilities[0], expected[i], rtol=1e-5, atol=1e-6)
        assert await result_count(case) == len(ids)  # no second result for any request
        stored = await read_results(case)
        assert sorted(r.id for r in stored) == sorted(ids)
        assert await pending_of(case) == 0
        assert "w-rescuer" in {r.worker for r in stored}, log

    asyncio.run(scenario())


@pytest.mark.slow
def test_two_workers_split_one_stream(
    redis_broker: BrokerCase, served_model: ServedModel, digits_data: Dataset, tmp_path: Path
) -> None:
    case = redis_broker
    x = rows(digits_data, 400)

    async def scenario() -> None:
        opts = ["--max-batch", "8", "--max-wait-ms", "20"]
        workers = [WorkerProcess(case, served_model, f"w-{i}", tmp_path, *opts) for i in (1, 2)]
        try:
            for w in workers:
                await w.ready()
            async with OnDemandClient.connect(case.url, "digits", streams=case.streams) as c:
                ids = [await c.request([row.tolist()]) for row in x]
                results = [await c.result(i, timeout=60) for i in ids]
        finally:
            logs = [w.stop() for w in workers]
        by_worker = {name: sum(r.worker == name for r in results) for name in ("w-1", "w-2")}
        assert all(n > 0 for n in by_worker.values()), (by_worker, logs)
        assert sum(by_worker.values()) == len(ids)
        assert await result_count(case) == len(ids)
        assert all("dead letters" in log for log in logs)  # both exited cleanly on SIGTERM

    asyncio.run(scenario())


def test_client_errors_are_clear(redis_broker: BrokerCase) -> None:
    with pytest.raises(OnDemandError, match="unsupported broker URL"):
        broker_kind("amqp://127.0.0.1")

    async def scenario() -> None:
        async with OnDemandClient.connect(redis_broker.url, "digits",
                                          streams=redis_broker.streams) as c:
            rid = await c.request([[0.0] * 64])
            with pytest.raises(ResultTimeout, match=rid):
                await c.result(rid, timeout=0.3)  # no worker is running

    asyncio.run(scenario())

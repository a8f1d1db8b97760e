"""Helpers of the worker tests: run a worker (in the test's loop or as a process), read streams.

``running_worker`` runs a :class:`server.worker.Worker` as a task of the test's event loop;
``WorkerProcess`` runs ``edgefleet server worker`` as a real child process (so it can be killed
with SIGKILL). ``read_results`` / ``read_dead_letters`` read what a broker holds, and
``result_count`` how many results were ever stored (a second result for one id would show).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edgefleet.ondemand import PredictionResult, nats_stream_name
from server.precompute.resolve import make_service
from server.worker import Worker, WorkerConfig, open_broker
from tests.server.broker_support import BrokerCase, ServedModel

ROOT = Path(__file__).resolve().parents[2]
GROUP = "edgefleet-workers"


@contextlib.asynccontextmanager
async def running_worker(
    case: BrokerCase, served: ServedModel, name: str = "w-inproc", *, claim_idle_s: float = 30.0,
    **config: Any,
) -> AsyncIterator[Worker]:
    broker = open_broker(case.url, case.streams, group=GROUP, consumer=name,
                         claim_idle_s=claim_idle_s, result_ttl_s=600)
    worker = Worker(WorkerConfig(model="digits", claim_idle_s=claim_idle_s, **config), broker,
                    served.engine, make_service(served.settings))
    await worker.start()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await broker.close()


async def wait_until(predicate: Any, timeout: float = 20.0, every: float = 0.05) -> None:
    """Await ``predicate()`` (sync or async) until true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


async def read_results(case: BrokerCase) -> list[PredictionResult]:
    """Every result the broker holds, in the order written."""
    s = case.streams
    if case.kind == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(case.url)
        entries: Any = await r.xrange(s.results)
        await r.aclose()
        return [PredictionResult.model_validate_json(f[b"data"]) for _, f in entries]
    return [PredictionResult.model_validate_json(m) for m in await _nats_messages(case, s.results)]


async def result_count(case: BrokerCase) -> int:
    """How many results were ever stored (entries on Redis; the stream's last sequence on
    JetStream, which counts replaced messages too)."""
    if case.kind == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(case.url)
        n = int(await r.xlen(case.streams.results))
        await r.aclose()
        return n
    import nats

    nc = await nats.connect(case.url)
    info = await nc.jetstream().stream_info(nats_stream_name(case.streams.results))
    await nc.close()
    return int(info.state.last_seq)


async def read_dead_letters(case: BrokerCase) -> list[dict[str, str]]:
    """Dead letters as ``{"data", "reason"}`` dicts."""
    s = case.streams
    if case.kind == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(case.url)
        entries: Any = await r.xrange(s.dead_letter)
        await r.aclose()
        return [{k.decode(): v.decode(errors="replace") for k, v in f.items()} for _, f in entries]
    return [
        {"data": data.decode(errors="replace"), "reason": reason}
        for data, reason in await _nats_messages(case, s.dead_letter, header="Edgefleet-Reason")
    ]


async def _nats_messages(case: BrokerCase, subject: str, header: str | None = None) -> list[Any]:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(case.url)
    js = nc.jetstream()
    name = nats_stream_name(subject)
    info = await js.stream_info(name)
    out: list[Any] = []
    for seq in range(info.state.first_seq or 1, (info.state.last_seq or 0) + 1):
        try:
            msg = await js.get_msg(name, seq)
        except NotFoundError:  # replaced (one message per result subject)
            continue
        out.append(msg.data if header is None else (msg.data, (msg.headers or {}).get(header)))
    await nc.close()
    return out


async def pending_of(case: BrokerCase, consumer: str | None = None) -> int:
    """Requests delivered and not acknowledged (of ``consumer``, or of the whole group)."""
    if case.kind == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(case.url)
        try:
            if consumer is None:
                return int((await r.xpending(case.streams.requests, GROUP))["pending"])
            rows = await r.xpending_range(case.streams.requests, GROUP, "-", "+", 10_000,
                                          consumername=consumer)
            return len(rows)
        finally:
            await r.aclose()
    import nats

    nc = await nats.connect(case.url)
    info = await nc.jetstream().consumer_info(nats_stream_name(case.streams.requests), GROUP)
    await nc.close()
    return int(info.num_ack_pending)


async def publish_raw(case: BrokerCase, payloads: list[bytes]) -> None:
    """Publish request bodies as they are (malformed ones included)."""
    if case.kind == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(case.url)
        for p in payloads:
            await r.xadd(case.streams.requests, {"data": p})
        await r.aclose()
        return
    import nats

    from edgefleet.ondemand import ensure_nats_streams

    nc = await nats.connect(case.url)
    js = nc.jetstream()
    await ensure_nats_streams(js, case.streams)
    for p in payloads:
        await js.publish(case.streams.requests, p)
    await nc.close()


class WorkerProcess:
    """``edgefleet server worker`` as a child process, its output in ``log``."""

    def __init__(self, case: BrokerCase, served: ServedModel, name: str, log_dir: Path,
                 *extra: str) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        env = {
            **os.environ,
            "EDGEFLEET_SERVER_DATABASE_URL": served.settings.database_url,
            "EDGEFLEET_SERVER_ARTIFACT_DIR": str(served.settings.artifact_dir),
            "EDGEFLEET_SERVER_LOG_FORMAT": "text",
        }
        cmd = [
            sys.executable, "-m", "edgefleet_cli", "server", "worker", "--model", "digits",
            "--broker", case.url, "--stream-prefix", case.prefix, "--consumer", name,
            "--group", GROUP, *extra,
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)

    async def ready(self, timeout: float = 60.0) -> None:
        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log.read_text()}")
            return "serving" in self.log.read_text(errors="replace")

        await wait_until(serving, timeout, every=0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> str:
        """SIGTERM, wait, and the process's output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.log.read_text(errors="replace")


def request_body(request_id: str, rows: list[list[float]]) -> bytes:
    return json.dumps({"id": request_id, "inputs": rows}).encode()

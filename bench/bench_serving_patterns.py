"""Benchmark: model-on-demand (broker worker) and precompute beside the in-process ceiling.

Prints, in one run, for the digits MLP plan:

* ``in-process, batch 32``  the ceiling: ``PlanRuntime.predict`` on 32 rows at a time, rows/s
                            (and batch 1 for reference), in this process;
* ``precompute (CSV|NPZ)``  ``server.precompute.precompute`` over ``--rows`` rows, chunks of
                            1,000, each committed to SQLite: rows/s (reading, scoring, storing);
* ``worker <broker>``       ``edgefleet server worker`` as its own process (max batch 32, max wait
                            2 ms) on Redis Streams and on NATS JetStream: *throughput* — a
                            backlog of ``--requests`` one-row requests is published through the
                            client helper, then the worker starts and drains it: requests/s
                            between the first and the last result's ``computed_at``, and the
                            worker's CPU per 1,000 requests — and *latency* — requests published
                            open-loop at half that rate (at most ``--max-rate``, 200/s: the
                            Python client's own limit is near) for ``--seconds``, p50/p99 from
                            publish to the result read by the client
                            (:class:`edgefleet.ondemand.OnDemandClient`).

Every rate is also given as a share of the batch-32 ceiling: what the broker, JSON, batching and
the result store cost. The publisher and result reader are Python (asyncio) on the same cores
as the worker and the broker.

Run: ``.venv/bin/python bench/bench_serving_patterns.py [--requests 5000] [--rows 50000]
[--seconds 5] [--brokers redis,nats] [--max-rate 200] [--plan-dir DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, Column, cpu_seconds, plan_dir_or_build, print_table, timeit

BROKERS = {"redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}


def setup_registry(workdir: Path, plan_dir: Path) -> dict[str, str]:
    """A migrated SQLite registry with the plan as digits version 1 (production); its env."""
    from registry import migrate
    from registry.db import make_engine
    from server.bootstrap import publish_plan_dir
    from server.settings import ServerSettings

    env = {
        "EDGEFLEET_SERVER_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
        "EDGEFLEET_SERVER_ARTIFACT_DIR": str(workdir / "artifacts"),
        "EDGEFLEET_SERVER_LOG_FORMAT": "text",
    }
    settings = ServerSettings(database_url=env["EDGEFLEET_SERVER_DATABASE_URL"],
                              artifact_dir=Path(env["EDGEFLEET_SERVER_ARTIFACT_DIR"]))
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    engine.dispose()
    publish_plan_dir(settings, plan_dir, "digits", aliases=["production"], metrics=[],
                     description="")
    return env


def digits_rows(n: int) -> np.ndarray:
    from edgefleet.datasets import load_dataset

    d = load_dataset("digits", seed=0)
    x = np.concatenate([d.x_train, d.x_test]).astype(np.float32)
    return np.resize(x, (n, x.shape[1]))


def ceiling(plan_dir: Path, x: np.ndarray) -> tuple[float, float]:
    """Rows/s of in-process predict at batch 32 and batch 1."""
    from edgefleet.runtime import PlanRuntime

    rt = PlanRuntime.from_dir(plan_dir)
    b32, b1 = x[:32], x[:1]
    return 32 / timeit(lambda: rt.predict(b32), 2.0), 1 / timeit(lambda: rt.predict(b1), 1.0)


def bench_precompute(env: dict[str, str], workdir: Path, x: np.ndarray) -> dict[str, float]:
    from registry.db import make_engine
    from server.precompute import make_service, precompute
    from server.settings import ServerSettings

    names = [f"pixel_{i // 8}_{i % 8}" for i in range(x.shape[1])]
    with (workdir / "in.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", *names])
        w.writerows([f"k{i}", *row] for i, row in enumerate(x.tolist()))
    np.savez(workdir / "in.npz", id=np.arange(len(x)), x=x)
    settings = ServerSettings(database_url=env["EDGEFLEET_SERVER_DATABASE_URL"],
                              artifact_dir=Path(env["EDGEFLEET_SERVER_ARTIFACT_DIR"]))
    engine = make_engine(settings.database_url)
    out = {}
    for name in ("in.csv", "in.npz"):
        report = precompute(engine, make_service(settings), "digits", workdir / name, "id",
                            chunk_size=1000)
        out[name.split(".")[1].upper()] = report.rows_per_s
    engine.dispose()
    return out


def start_worker(env: dict[str, str], url: str, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "edgefleet_cli", "server", "worker", "--model", "digits",
           "--broker", url, "--stream-prefix", prefix, "--max-batch", "32", "--max-wait-ms", "2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "serving" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc


async def publish_backlog(url: str, streams: object, x: np.ndarray, n: int) -> None:
    """Publish ``n`` one-row requests through the client helper (before any worker runs)."""
    from edgefleet.ondemand import OnDemandClient

    async with OnDemandClient.connect(url, "digits", streams=streams) as c:  # type: ignore[arg-type]
        for lo in range(0, n, 16):  # 16 publishes in flight at a time
            await asyncio.gather(*(c.request(x[i % len(x) : i % len(x) + 1].tolist())
                                   for i in range(lo, min(n, lo + 16))))


async def result_count(kind: str, url: str, streams: object) -> int:
    """How many results the broker holds."""
    from edgefleet.ondemand import nats_stream_name

    results = streams.results  # type: ignore[attr-defined]
    if kind == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url)
        n = int(await r.xlen(results))
        await r.aclose()
        return n
    import nats

    nc = await nats.connect(url)
    info = await nc.jetstream().stream_info(nats_stream_name(results))
    await nc.close()
    return int(info.state.messages)


async def result_times(kind: str, url: str, streams: object) -> list[float]:
    """``computed_at`` (epoch seconds) of every stored result."""
    from edgefleet.ondemand import PredictionResult, nats_stream_name

    results = streams.results  # type: ignore[attr-defined]
    if kind == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url)
        entries: Any = await r.xrange(results)
        await r.aclose()
        data = [f[b"data"] for _, f in entries]
    else:
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        name = nats_stream_name(results)
        info = await js.stream_info(name)
        data = [(await js.get_msg(name, seq)).data
                for seq in range(info.state.first_seq, info.state.last_seq + 1)]
        await nc.close()
    return [PredictionResult.model_validate_json(d).computed_at.timestamp() for d in data]


async def latency(url: str, streams: object, x: np.ndarray, rate: float, seconds: float
                  ) -> tuple[float, float, int]:
    from edgefleet.ondemand import OnDemandClient

    lat: list[float] = []

    async def one(c: OnDemandClient, row: list[list[float]]) -> None:
        t0 = time.perf_counter()
        rid = await c.request(row)
        await c.result(rid, timeout=60)
        lat.append(time.perf_counter() - t0)

    async with OnDemandClient.connect(url, "digits", streams=streams) as c:  # type: ignore[arg-type]
        tasks = []
        start = time.perf_counter()
        i = 0
        while (now := time.perf_counter()) - start < seconds:
            due = int((now - start) * rate)
            while i < due:
                tasks.append(asyncio.create_task(one(c, x[i % len(x) : i % len(x) + 1].tolist())))
                i += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
    arr = np.asarray(lat) * 1e3
    return float(np.median(arr)), float(np.percentile(arr, 99)), len(lat)


async def cleanup(kind: str, url: str, streams: object) -> None:
    from edgefleet.ondemand import nats_stream_name

    names = [streams.requests, streams.results, streams.dead_letter]  # type: ignore[attr-defined]
    if kind == "redis":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url)
        prefix = names[0].rsplit(".", 2)[0]
        keys = [k async for k in r.scan_iter(match=f"{prefix}.*", count=1000)]
        for lo in range(0, len(keys), 500):
            await r.delete(*keys[lo : lo + 500])
        await r.aclose()
        return
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for name in names:
        with contextlib.suppress(Exception):  # a stream that was never created
            await js.delete_stream(nats_stream_name(name))
    await nc.close()


def bench_worker(kind: str, env: dict[str, str], workdir: Path, x: np.ndarray, n: int,
                 seconds: float, max_rate: float) -> tuple[float, float, float, float, float]:
    """Backlog drain rate and worker CPU per 1k; then p50/p99 at half that rate (at most
    ``max_rate``), and the rate."""
    from edgefleet.ondemand import Streams

    url = BROKERS[kind]
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    streams = Streams.for_model("digits", prefix)
    asyncio.run(publish_backlog(url, streams, x, n))
    proc = start_worker(env, url, prefix, workdir / f"worker-{kind}.log")
    try:
        cpu0 = cpu_seconds(proc.pid)
        deadline = time.monotonic() + 300
        while (done := asyncio.run(result_count(kind, url, streams))) < n:
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"the worker did not drain the backlog ({done} of {n})")
            time.sleep(0.2)
        cpu_per_k = (cpu_seconds(proc.pid) - cpu0) / n * 1000
        times = asyncio.run(result_times(kind, url, streams))
        drain = n / (max(times) - min(times))
        rate = min(drain / 2, max_rate)
        p50, p99, _ = asyncio.run(latency(url, streams, x, rate, seconds))
        return drain, cpu_per_k, rate, p50, p99
    finally:
        proc.terminate()
        proc.wait(30)
        asyncio.run(cleanup(kind, url, streams))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--brokers", default="redis,nats")
    parser.add_argument("--max-rate", type=float, default=200.0)
    parser.add_argument("--plan-dir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        workdir = Path(tmp)
        plan_dir = plan_dir_or_build(args.plan_dir, workdir)
        env = setup_registry(workdir, plan_dir)
        x = digits_rows(args.rows)
        b32, b1 = ceiling(plan_dir, x)
        pre = bench_precompute(env, workdir, x)
        workers = {k: bench_worker(k, env, workdir, x, args.requests, args.seconds, args.max_rate)
                   for k in args.brokers.split(",") if k}
    print(f"digits MLP plan, {os.cpu_count()} cores; rates as a share of the batch-32 ceiling\n")
    cols = [Column("path", 34), Column("rows/s", 10, ",.0f"), Column("of ceiling", 11, ".1%"),
            Column("p50 ms", 8, ".2f"), Column("p99 ms", 8, ".2f"),
            Column("CPU s/1k req", 13, ".3f")]
    rows: list[list[object]] = [
        ["in-process predict, batch 32", b32, 1.0, None, None, None],
        ["in-process predict, batch 1", b1, b1 / b32, None, None, None],
    ]
    rows += [[f"precompute {k} ({args.rows:,} rows, SQLite)", v, v / b32, None, None, None]
             for k, v in pre.items()]
    for kind, (drain, cpu, rate, p50, p99) in workers.items():
        rows.append([f"worker {kind}: backlog drained", drain, drain / b32, None, None, cpu])
        rows.append([f"worker {kind}: at {rate:,.0f} req/s", None, None, p50, p99, None])
    print_table(cols, rows)


if __name__ == "__main__":
    main()

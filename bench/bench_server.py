"""Benchmark: the server's hot paths beside a bare FastAPI endpoint with the same payload.

Prints, in one run, at concurrency 32 (``httpx.AsyncClient`` over keep-alive connections on
127.0.0.1), requests/s and p50/p99 latency of:

* ``assignment poll``   ``GET /api/v1/devices/{id}/assignment`` with a device token (200);
* ``assignment 304``    the same with ``If-None-Match`` (304, no body);
* ``telemetry intake``  ``POST /api/v1/devices/{id}/telemetry``, a new idempotency key each
                        time, with a digits drift summary (~3 KB; stored in the database);
* ``V2 infer (1 row)``  ``POST /v2/models/digits/infer``, one 64-feature sample, on the plan.

Each row is measured against two uvicorn processes started the same way (one worker, no access
log from uvicorn): EdgeFleet's server (``edgefleet server``; SQLite by default, or
``--database-url``) and a *bare* FastAPI app whose endpoint takes the same request (parsing the
JSON body where ours does) and returns the same response bytes, doing nothing else. The ratio
``bare/ours`` of requests/s is what the server's work costs (auth, database, validation, the
model, logging); the client is the same for both and on the same two cores, so absolute numbers
are client-bound too.

Run: ``.venv/bin/python bench/bench_server.py [--requests 2000] [--concurrency 32]
[--database-url URL] [--plan-dir DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import Column, cpu_seconds, free_port, plan_dir_or_build, print_table, process
from fastapi import FastAPI, Header, Request, Response

ADMIN = {"X-Admin-Key": "bench-admin-key"}
ENROL = "bench-enrol-token"


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header that presents ``token``."""
    return {"Authorization": f"Bearer {token}"}


# --- the bare app (run in its own process by --serve-bare) ---------------------------------------
def serve_bare(port: int, payload_file: Path) -> None:
    """A bare FastAPI app answering each route with the recorded response of our server."""
    import uvicorn

    canned: dict[str, Any] = json.loads(payload_file.read_text())
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/assignment")
    def assignment(if_none_match: str | None = Header(default=None)) -> Response:
        etag = canned["assignment_etag"]
        if if_none_match == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(canned["assignment"], media_type="application/json", headers={"ETag": etag})

    @app.post("/telemetry", status_code=201)
    def telemetry(body: dict[str, Any]) -> Response:
        return Response(canned["telemetry"], status_code=201, media_type="application/json")

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        await request.json()
        return Response(canned["infer"], media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


# --- load generation -----------------------------------------------------------------------------
@dataclass
class Result:
    n: int
    seconds: float
    latencies: np.ndarray
    errors: int
    cpu_ms: float = float("nan")  # server CPU time per request

    @property
    def rps(self) -> float:
        return self.n / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3


RequestFn = Callable[[httpx.AsyncClient, int, int], Any]


def measure(pid: int, base: str, make: RequestFn, expect: int, n: int, concurrency: int) -> Result:
    """:func:`load`, plus the server process's CPU time per request."""
    before = cpu_seconds(pid)
    result = asyncio.run(load(base, make, expect, n, concurrency))
    result.cpu_ms = (cpu_seconds(pid) - before) * 1e3 / (n + concurrency)
    return result


async def load(base: str, make: RequestFn, expect: int, n: int, concurrency: int) -> Result:
    """``n`` requests (after ``concurrency`` warm-up requests) from ``concurrency`` workers."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await asyncio.gather(*(make(client, w, -1 - w) for w in range(concurrency)))
        latencies: list[float] = []
        errors = 0
        counter = iter(range(n))

        async def worker(w: int) -> None:
            nonlocal errors
            for i in counter:
                t = time.perf_counter()
                r = await make(client, w, i)
                latencies.append(time.perf_counter() - t)
                if r.status_code != expect:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        seconds = time.perf_counter() - start
    return Result(n, seconds, np.asarray(latencies), errors)


# --- the benchmark -------------------------------------------------------------------------------
def arrange(base: str, plan_dir: Path, devices: int) -> dict[str, Any]:
    """Register the plan in production, enrol devices; return tokens and the payloads."""
    from edgefleet.drift import DriftSummary
    from edgefleet.plan import PlanManifest

    files = {
        k: (plan_dir / f).read_bytes()
        for k, f in (
            ("plan", "plan.tflite"),
            ("manifest", "manifest.json"),
            ("weights", "weights.safetensors"),
        )
    }
    with httpx.Client(base_url=base, timeout=60) as http:
        http.post("/api/v1/models", json={"name": "digits"}, headers=ADMIN).raise_for_status()
        http.post(
            "/api/v1/models/digits/versions",
            files={k: (k, v) for k, v in files.items()},
            data={
                "plan_sha256": hashlib.sha256(files["plan"]).hexdigest(),
                "weights_sha256": hashlib.sha256(files["weights"]).hexdigest(),
            },
            headers=ADMIN,
        ).raise_for_status()
        http.put(
            "/api/v1/models/digits/aliases/production", json={"version": 1}, headers=ADMIN
        ).raise_for_status()
        tokens = []
        for i in range(devices):
            r = http.post(
                "/api/v1/devices/enroll",
                json={"enrollment_token": ENROL, "device_id": f"bench-{i:03d}", "model": "digits"},
            )
            r.raise_for_status()
            tokens.append(r.json()["device_token"])
        first = http.get("/api/v1/devices/bench-000/assignment", headers=bearer(tokens[0]))
        manifest = PlanManifest.from_json(files["manifest"])
        assert manifest.reference is not None
        drift = DriftSummary.empty(manifest.reference, model="digits", version=1)
        sample = {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 64],
                    "datatype": "FP32",
                    "data": [float(v % 17) for v in range(64)],
                }
            ]
        }
        inferred = http.post("/v2/models/digits/infer", json=sample, headers=bearer(tokens[0]))
        t0 = datetime.now(UTC)
        report = {
            "idempotency_key": "x" * 16,
            "model": "digits",
            "version": 1,
            "window_start": t0.isoformat(),
            "window_end": (t0 + timedelta(minutes=5)).isoformat(),
            "drift": drift.model_dump(mode="json"),
            "inference": {"local": 100, "fallback": 1, "errors": 0, "latency_ms_p50": 0.1},
        }
        ack = http.post(
            "/api/v1/devices/bench-000/telemetry",
            json=report,
            headers=bearer(tokens[0]),
        )
        ack.raise_for_status()
    return {
        "tokens": tokens,
        "assignment": first.text,
        "assignment_etag": first.headers["etag"],
        "infer_body": sample,
        "infer": inferred.text,
        "report": report,
        "telemetry": ack.text,
    }


def workloads(ctx: dict[str, Any]) -> list[tuple[str, int, RequestFn, RequestFn]]:
    """(name, expected status, request on ours, request on bare) for each row."""
    tokens = ctx["tokens"]
    etag = ctx["assignment_etag"]
    run = uuid.uuid4().hex[:8]

    def auth(w: int) -> dict[str, str]:
        return bearer(tokens[w % len(tokens)])

    def poll(c: httpx.AsyncClient, w: int, i: int) -> Any:
        return c.get(f"/api/v1/devices/bench-{w % len(tokens):03d}/assignment", headers=auth(w))

    def poll_bare(c: httpx.AsyncClient, w: int, i: int) -> Any:
        return c.get("/assignment", headers=auth(w))

    def cond(c: httpx.AsyncClient, w: int, i: int) -> Any:
        # every device of the default model sees the same assignment apart from its id
        return c.get(
            "/api/v1/devices/bench-000/assignment",
            headers={**bearer(tokens[0]), "If-None-Match": etag},
        )

    def cond_bare(c: httpx.AsyncClient, w: int, i: int) -> Any:
        return c.get("/assignment", headers={**bearer(tokens[0]), "If-None-Match": etag})

    def report(w: int, i: int) -> dict[str, Any]:
        return {**ctx["report"], "idempotency_key": f"{run}-{w:03d}-{i:08d}"}

    def post(c: httpx.AsyncClient, w: int, i: int) -> Any:
        device = w % len(tokens)
        return c.post(
            f"/api/v1/devices/bench-{device:03d}/telemetry",
            json=report(w, i),
            headers=bearer(tokens[device]),
        )

    def post_bare(c: httpx.AsyncClient, w: int, i: int) -> Any:
        return c.post("/telemetry", json=report(w, i), headers=auth(w))

    def infer(c: httpx.AsyncClient, w: int, i: int) -> Any:
        return c.post("/v2/models/digits/infer", json=ctx["infer_body"], headers=auth(w))

    def infer_bare(c: httpx.AsyncClient, w: int, i: int) -> Any:
        return c.post("/infer", json=ctx["infer_body"], headers=auth(w))

    return [
        ("assignment poll", 200, poll, poll_bare),
        ("assignment 304", 304, cond, cond_bare),
        ("telemetry intake", 201, post, post_bare),
        ("V2 infer (1 row)", 200, infer, infer_bare),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per row")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--plan-dir", type=Path, default=None)
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--payloads", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.payloads)
        return
    if not 1 <= args.requests <= 100_000:
        parser.error("--requests must be between 1 and 100000")

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        plan_dir = plan_dir_or_build(args.plan_dir, tmp)
        db_url = args.database_url or f"sqlite:///{tmp / 'registry.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_SERVER_")}
        env.update(
            TF_CPP_MIN_LOG_LEVEL="3",
            EDGEFLEET_SERVER_DATABASE_URL=db_url,
            EDGEFLEET_SERVER_ARTIFACT_DIR=str(tmp / "artifacts"),
            EDGEFLEET_SERVER_ADMIN_KEYS="bench-admin-key",
            EDGEFLEET_SERVER_ENROLLMENT_TOKENS=ENROL,
            EDGEFLEET_SERVER_LOG_LEVEL="INFO",
        )
        ours_port, bare_port = free_port(), free_port()
        ours = f"http://127.0.0.1:{ours_port}"
        bare = f"http://127.0.0.1:{bare_port}"
        server = [
            sys.executable,
            "-m",
            "edgefleet_cli",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(ours_port),
        ]
        with process(server, env, f"{ours}/api/v1/health/ready", tmp / "server.log") as mine_p:
            ctx = arrange(ours, plan_dir, devices=args.concurrency)
            payloads = tmp / "payloads.json"
            payloads.write_text(
                json.dumps(
                    {k: ctx[k] for k in ("assignment", "assignment_etag", "infer", "telemetry")}
                )
            )
            bare_cmd = [
                sys.executable,
                __file__,
                "--serve-bare",
                str(bare_port),
                "--payloads",
                str(payloads),
            ]
            with process(bare_cmd, env, f"{bare}/ready", tmp / "bare.log") as bare_p:
                rows = []
                for name, status, mine, theirs in workloads(ctx):
                    n, c = args.requests, args.concurrency
                    a = measure(mine_p.pid, ours, mine, status, n, c)
                    b = measure(bare_p.pid, bare, theirs, status, n, c)
                    rows.append((name, a, b))
        print_results(rows, args, db_url)


def print_results(
    rows: list[tuple[str, Result, Result]], args: argparse.Namespace, db: str
) -> None:
    backend = db.split(":", 1)[0]
    print(
        f"\nconcurrency {args.concurrency}, {args.requests} requests per row, "
        f"database {backend}, {os.cpu_count()} CPUs, httpx client on the same machine\n"
    )
    columns = [
        Column("path", 18),
        Column("server", 9, align="<"),
        Column("req/s", 8, ",.0f"),
        Column("p50 ms", 8, ".2f"),
        Column("p99 ms", 8, ".2f"),
        Column("errors", 6),
        Column("CPU ms/req", 10, ".2f"),
        Column("req/s bare/ours", 17, ".2f"),
        Column("CPU ours/bare", 13, ".2f"),
    ]
    print_table(
        columns,
        [
            (label, server, r.rps, r.pct(50), r.pct(99), r.errors, r.cpu_ms, *ratios)
            for name, ours, bare in rows
            for label, server, r, ratios in (
                (name, "edgefleet", ours, (bare.rps / ours.rps, ours.cpu_ms / bare.cpu_ms)),
                ("", "bare", bare, ("", "")),
            )
        ],
    )
    print(
        "\nreq/s and latency share two cores with the client (and whatever else runs); the "
        "server's CPU time per request is the steadier figure."
    )


if __name__ == "__main__":
    main()

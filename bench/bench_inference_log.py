"""Benchmark: the inference log's cost on the V2 path (on vs off) and the monitoring query.

Part 1 starts EdgeFleet's server twice the same way (one uvicorn worker, SQLite in a temporary
directory, the digits plan in production): once with the inference log on (the default) and
once with ``EDGEFLEET_SERVER_INFERENCE_LOG_ENABLED=false``, and drives
``POST /v2/models/digits/infer`` (one 64-feature row) with ``wrk`` (``--threads 2``,
``--connections 32``) for ``--seconds`` each. It prints requests/s, latency and the server's
CPU time per request of both, their ratios, and, for the run with the log on, how many
answered requests were logged once the server stopped (its shutdown writes what is queued).

Part 2 fills a fresh SQLite database with ``--rows`` synthetic logged instances (default one
million; three versions, a quarter of them labelled, over one day; the rollups are written with
them, as the server's writer does) and times :func:`server.evidence.monitor.monitor` over one
day three ways (median of three calls each): from the rollups over the minute-aligned day, from
the rollups over a day starting 13 s past the minute (the partial minutes and the minutes that
window boundaries cut come from the records), and from the records only (``use_rollups=False``);
it checks the first and the last give the same figures.

Run: ``.venv/bin/python bench/bench_inference_log.py [--seconds 10] [--rows 1000000]
[--plan-dir DIR] [--monitor-only]``. Needs ``wrk`` (Debian package) for part 1; without it,
part 1 is skipped with a message.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import Column, cpu_seconds, free_port, plan_dir_or_build, print_table, process
from bench_server import ADMIN, ENROL, arrange

ADMIN_KEY = ADMIN["X-Admin-Key"]
LUA = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def run_wrk(url: str, script: Path, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout

    def grab(pattern: str) -> str:
        found = re.search(pattern, out)
        return found.group(1) if found else "0"

    def ms(text: str) -> float:
        value = float(re.sub(r"[a-z]+$", "", text))
        return value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[re.sub(r"^[0-9.]+", "", text)]

    return {
        "requests": float(grab(r"(\d+) requests in")),
        "rps": float(grab(r"Requests/sec:\s+([0-9.]+)")),
        "p50": ms(grab(r"50%\s+([0-9.]+[a-z]+)")),
        "p99": ms(grab(r"99%\s+([0-9.]+[a-z]+)")),
        "non2xx": float(grab(r"Non-2xx or 3xx responses: (\d+)")),
    }


def one_server(tmp: Path, plan_dir: Path, log_on: bool, seconds: int) -> dict[str, float]:
    import json

    import sqlalchemy as sa

    from registry.db import make_engine

    name = "on" if log_on else "off"
    db_url = f"sqlite:///{tmp / f'{name}.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_SERVER_")}
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3", EDGEFLEET_SERVER_DATABASE_URL=db_url,
        EDGEFLEET_SERVER_ARTIFACT_DIR=str(tmp / f"artifacts-{name}"),
        EDGEFLEET_SERVER_SIGNING_KEY_PATH=str(tmp / f"keys-{name}" / "k.pem"),
        EDGEFLEET_SERVER_ADMIN_KEYS=ADMIN_KEY, EDGEFLEET_SERVER_ENROLLMENT_TOKENS=ENROL,
        EDGEFLEET_SERVER_LOG_LEVEL="WARNING",
        EDGEFLEET_SERVER_INFERENCE_LOG_ENABLED="true" if log_on else "false",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgefleet_cli", "server", "--host", "127.0.0.1", "--port",
           str(port)]
    with process(cmd, env, f"{base}/api/v1/health/ready", tmp / f"server-{name}.log") as proc:
        ctx = arrange(base, plan_dir, devices=1)
        script = tmp / "infer.lua"
        script.write_text(LUA.format(body=json.dumps(ctx["infer_body"]), key=ADMIN_KEY))
        cpu0 = cpu_seconds(proc.pid)
        result = run_wrk(f"{base}/v2/models/digits/infer", script, seconds)
        result["cpu_ms"] = (cpu_seconds(proc.pid) - cpu0) * 1e3 / max(result["requests"], 1)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        result["logged"] = float(conn.execute(sa.text(
            "SELECT COUNT(*) FROM inference_record WHERE caller LIKE 'admin:%'")).scalar_one())
    engine.dispose()
    return result


def part1(tmp: Path, plan_dir: Path, seconds: int) -> None:
    if shutil.which("wrk") is None:
        print("part 1 skipped: wrk is not installed (apt-get install wrk)")
        return
    on = one_server(tmp, plan_dir, True, seconds)
    off = one_server(tmp, plan_dir, False, seconds)
    print(f"\nV2 infer, 1 row, wrk -t2 -c32 for {seconds}s each, SQLite, {os.cpu_count()} CPUs\n")
    columns = [Column("inference log", 14, align="<"), Column("req/s", 8, ",.0f"),
               Column("p50 ms", 8, ".2f"), Column("p99 ms", 8, ".2f"),
               Column("non-2xx", 7, ",.0f"), Column("CPU ms/req", 10, ".3f"),
               Column("requests", 9, ",.0f"), Column("logged", 9, ",.0f")]
    print_table(columns, [
        ("on", on["rps"], on["p50"], on["p99"], on["non2xx"], on["cpu_ms"], on["requests"],
         on["logged"]),
        ("off", off["rps"], off["p50"], off["p99"], off["non2xx"], off["cpu_ms"],
         off["requests"], float("nan")),
    ])
    print(f"\nreq/s on/off: {on['rps'] / off['rps']:.3f}; CPU per request on/off: "
          f"{on['cpu_ms'] / off['cpu_ms']:.3f}. Logged minus completed (on): "
          f"{on['logged'] - on['requests']:+.0f}: wrk counts only responses it read before "
          "time ran out; requests still in flight (at most one per connection, 32) were "
          "answered and logged as well.")


def fill(engine: Any, rows: int, since: datetime) -> None:
    from registry.evidence import insert_records, latency_bucket

    rng = random.Random(5)
    chunk: list[dict[str, Any]] = []
    for i in range(rows):
        version = 1 + i % 3
        latency = rng.lognormvariate(0, 0.7)
        label = str(rng.randrange(10))
        chunk.append({
            "request_id": f"b-{i}", "row_index": 0,
            "created_at": since + timedelta(seconds=86400 * i / rows), "model": "digits",
            "version": version, "alias": "production", "variant": None, "caller": "app:bench",
            "status": 200 if rng.random() > 0.01 else 400, "latency_ms": latency,
            "latency_bucket": latency_bucket(latency), "label": label, "confidence": 0.9,
            "input_sha256": None, "inputs": None,
            "true_label": (label if rng.random() < 0.9 else "0") if i % 4 == 0 else None,
        })
        if len(chunk) == 20_000:
            with engine.begin() as conn:
                insert_records(conn, chunk)
            chunk = []
    if chunk:
        with engine.begin() as conn:
            insert_records(conn, chunk)


def part2(tmp: Path, rows: int) -> None:
    from sqlmodel import Session

    from registry import migrate
    from registry.db import make_engine
    from server.evidence.monitor import MonitorReport, monitor

    engine = make_engine(f"sqlite:///{tmp / 'monitor.db'}")
    migrate.upgrade(engine)
    since = datetime(2030, 1, 1, tzinfo=UTC)
    t0 = time.perf_counter()
    fill(engine, rows, since)
    filled = time.perf_counter() - t0
    cases = [
        ("rollups, whole day", since, True),
        ("rollups, +13 s", since + timedelta(seconds=13), True),
        ("records only", since, False),
    ]
    table_rows = []
    reports: dict[str, MonitorReport] = {}
    for name, start, use_rollups in cases:
        times = []
        for _ in range(3):
            with Session(engine) as session:
                t0 = time.perf_counter()
                reports[name] = monitor(session, "digits", start, start + timedelta(days=1),
                                        use_rollups=use_rollups)
                times.append(time.perf_counter() - t0)
        total = sum(v.requests for v in reports[name].versions)
        table_rows.append((name, statistics.median(times) * 1e3, min(times) * 1e3,
                           max(times) * 1e3, float(total)))
    engine.dispose()
    same = reports["rollups, whole day"].versions == reports["records only"].versions
    versions = len(reports["records only"].versions)
    print(f"\nmonitoring query, one day, SQLite, {versions} versions, 24 accuracy windows "
          f"(filled in {filled:.0f} s, rollups written with the records)\n")
    print_table([Column("answered from", 20, align="<"), Column("median ms", 10, ",.0f"),
                 Column("min ms", 8, ",.0f"), Column("max ms", 8, ",.0f"),
                 Column("requests", 10, ",.0f")], table_rows)
    print(f"\nrollups and records give the same figures over the whole day: {same}. The "
          "'+13 s' window is not minute-aligned: its ends and the minute each hourly window "
          "boundary cuts (24 minutes) are read from the records.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--plan-dir", type=Path, default=None)
    parser.add_argument("--monitor-only", action="store_true", help="part 2 only")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 600 or not 1 <= args.rows <= 20_000_000:
        parser.error("--seconds must be 1..600 and --rows 1..20,000,000")
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.monitor_only:
            part1(tmp, plan_dir_or_build(args.plan_dir, tmp), args.seconds)
        part2(tmp, args.rows)


if __name__ == "__main__":
    main()

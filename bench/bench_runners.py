"""Requests/s of V2 inference: the main server, one runner and two runners behind nginx.

    .venv/bin/python bench/bench_runners.py [--seconds 15] [--connections 32] [--threads 2]

One run, side by side, on the same model (the digits MLP, version 1, alias ``production``) and
the same request (one row, JSON): ``wrk`` (Debian's package) drives ``POST
/v2/models/digits/infer`` against (a) the main server (``edgefleet server run``, one uvicorn
worker, SQLite, its inference log on), (b) nginx in front of one runner, (c) nginx in front of
two runners (``edgefleet server runner``, each one process). Every process runs on this
machine's cores, which the load generator and nginx share: two runners on two cores cannot
double the throughput here; on a cluster each runner pod has its own cores. Columns: req/s,
latency p50/p99 (wrk's), and the non-2xx answers and socket errors (goal 0).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Column, plan_dir_or_build, print_table

from tests.server.processes import ADMIN, ADMIN_KEY, Proc, publish, set_alias, start_server
from tests.server.runner_support import (
    APP_KEY,
    APP_SECRET,
    RUNNER_KEY,
    start_balancer,
    start_runner,
)

LUA = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {secret}"
"""


def wrk(url: str, script: Path, seconds: int, connections: int, threads: int) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 in ms, non-2xx answers and socket errors."""
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-s", str(script), f"{url}/v2/models/digits/infer"],
        capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def ms(pct: str) -> float:
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rate": rate, "p50": ms("50"), "p99": ms("99"),
            "bad": float(bad.group(1)) if bad else 0.0,
            "socket": float(sum(int(g) for g in errors.groups())) if errors else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="measured seconds per row")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--plan-dir", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    import httpx
    import numpy as np

    from edgefleet import v2

    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-runners-") as tmp_name:
        tmp = Path(tmp_name)
        plan_dir = plan_dir_or_build(args.plan_dir, tmp)
        try:
            server = start_server(tmp, f"sqlite:///{tmp / 'registry.db'}", env={
                "EDGEFLEET_SERVER_ADMIN_KEYS": ADMIN_KEY, "EDGEFLEET_SERVER_RUNNER_KEYS":
                RUNNER_KEY, "EDGEFLEET_SERVER_INFERENCE_KEYS": APP_KEY})
            procs.append(server)
            with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as admin:
                publish(admin, "digits", plan_dir)
                set_alias(admin, "digits", "production", 1)
            env = {"EDGEFLEET_RUNNER_MODELS": "digits", "EDGEFLEET_RUNNER_LOG_LEVEL": "WARNING",
                   "EDGEFLEET_RUNNER_DRAIN_S": "0"}
            runners = [start_runner(tmp, server.url, name=f"runner-{i}", env=env) for i in (1, 2)]
            procs += runners
            hosts = [r.url.removeprefix("http://") for r in runners]
            one = start_balancer(tmp, hosts[:1], name="nginx-one")
            two = start_balancer(tmp, hosts, name="nginx-two")
            procs += [one, two]
            body = v2.request_from_array(np.zeros((1, 64), dtype=np.float32)).model_dump_json(
                exclude_none=True)
            script = tmp / "infer.lua"
            script.write_text(LUA.format(body=body, secret=APP_SECRET))
            rows = []
            for label, url in (("main server (1 process)", server.url),
                               ("nginx + 1 runner", one.url), ("nginx + 2 runners", two.url)):
                wrk(url, script, 2, args.connections, args.threads)  # warm-up
                r = wrk(url, script, args.seconds, args.connections, args.threads)
                rows.append((label, r["rate"], r["p50"], r["p99"], r["bad"] + r["socket"]))
        finally:
            for p in reversed(procs):
                p.stop()
    print(f"\nV2 inference, digits MLP, 1 row/request, wrk -c {args.connections} "
          f"-t {args.threads}, {args.seconds} s per row")
    print_table([Column("target", 26), Column("req/s", 9, ".0f"), Column("p50", 9, ".1f", " ms"),
                 Column("p99", 9, ".1f", " ms"), Column("errors", 7, ".0f")], rows)


if __name__ == "__main__":
    main()

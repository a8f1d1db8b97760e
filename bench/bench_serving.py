"""V2 serving: our endpoint against the bare FastAPI floor and the in-process ceiling, under wrk.

One run prints, at each concurrency (default 1, 8, 32, 64), req/s and p50/p99 latency of:

- **floor**: a bare FastAPI app under the same uvicorn settings that parses the same JSON body
  (``await request.json()``) and returns our recorded V2 response;
- **ours**: ``edgefleet server run`` on SQLite with every production feature on — an inference key,
  alias resolution (``/v2/models/{m}/infer``, the ``production`` alias), the access log (JSON lines
  to a file) and the inference log (written to the database) — with ``--workers 1`` and
  ``--workers 2``;
- **ceiling**: the interpreter alone in this process, running what the server runs (the
  version's serving copy, ``edgefleet.frozen.FrozenRuntime.predict``), batch 1 and 32.

for two models authored at bench time in a child process (TensorFlow runs only there): the tiny
digits MLP (64 → 64 → 10) and a heavy MLP 784 → 3072 → 3072 → 10, with ``max_batch`` 32 and the
product's other batching defaults (no queue delay: a batch is what is queued when an interpreter
frees up; ``--batching`` replaces them). The generator is ``wrk``
(Debian's package, installed when missing), one thread, keep-alive, 127.0.0.1; its CPU per cell
(cores: CPU seconds / wall seconds) says when it, not the server, was the limit (on 2 cores it
competes with ``--workers 2``). Each cell also gives the server's CPU per request (every thread
and worker, ``/proc``), and the ceiling each call's CPU: a busy machine distorts them less than
req/s. The servers are up together and each concurrency's cells run one after the other, so the
ratios compare cells under the same load (each server and model first gets a 1 s wrk
run at the top concurrency, not reported). ``--repeat N`` runs each cell N times, the targets'
runs of a concurrency interleaved, and gives each figure of a cell as the median of its N runs.
``--models`` and ``--targets`` measure a part of the table (ratios needing a missing cell are
left out).

Run: ``.venv/bin/python bench/bench_serving.py`` (``--duration 10`` per cell by default). The
parts live beside it: ``_serving_setup.py`` (plans, body, floor, ceiling), ``_serving_wrk.py``
(the generator and the CPU readings), ``_serving_report.py`` (the table and the ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import httpx
from _common import build_digits_plan, free_port, process
from _serving_report import MODELS, TARGETS, Cells, report
from _serving_setup import (
    ADMIN_KEY,
    APP_KEY,
    HEADERS,
    HEAVY_FEATURES,
    body_for,
    build_heavy_plan,
    ceiling,
    register,
    serve_bare,
)
from _serving_wrk import Cell, ensure_wrk, median_cell, wrk


# --- the run ---------------------------------------------------------------------------------
def server_env(tmp: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_SERVER_")}
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3",
        EDGEFLEET_SERVER_DATABASE_URL=db_url,
        EDGEFLEET_SERVER_ARTIFACT_DIR=str(tmp / "artifacts"),
        EDGEFLEET_SERVER_SIGNING_KEY_PATH=str(tmp / "keys" / "signing.pem"),
        EDGEFLEET_SERVER_ADMIN_KEYS=ADMIN_KEY,
        EDGEFLEET_SERVER_INFERENCE_KEYS=f"bench:{APP_KEY}",
        EDGEFLEET_SERVER_LOG_LEVEL="INFO",
        EDGEFLEET_SERVER_INFERENCE_LOG_ENABLED="true",
        EDGEFLEET_SERVER_METRICS_ENABLED="true",
        EDGEFLEET_SERVER_BATCHING=json.dumps({"default": {"max_batch": 32}}),
    )
    return env


def server_cmd(port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "edgefleet_cli", "server", "run", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers)]


def warm(base: str, model: str, body: bytes, *, parallel: int = 1) -> str:
    """``parallel`` requests at once (each worker loads the version); the response text."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> str:
        answer = httpx.post(f"{base}/v2/models/{model}/infer", content=body, headers=HEADERS,
                            timeout=300)
        answer.raise_for_status()
        return answer.text

    with ThreadPoolExecutor(parallel) as pool:
        return next(iter(pool.map(one, range(parallel))))


def measure(args: argparse.Namespace, tmp: Path, env: dict[str, str], binary: str
            ) -> dict[str, Cells]:
    """``{target: {model: {concurrency: cell}}}``: floor, ours (1 worker) and ours (2 workers),
    all up at once, measured cell after cell at each concurrency (floor, then ours, then ours
    with 2 workers), so the columns of a concurrency see the same load on the machine."""
    bodies = {"tiny": body_for(64), "heavy": body_for(HEAVY_FEATURES)}
    models = [(m, bodies[m]) for m in args.models]
    cells: dict[str, Cells] = {t: {m: {} for m, _ in models} for t in args.targets}
    p1, p2, pf = free_port(), free_port(), free_port()
    b1, b2, bf = (f"http://127.0.0.1:{p}" for p in (p1, p2, pf))
    with process(server_cmd(p1, 1), env, f"{b1}/api/v1/health/ready", tmp / "server-w1.log"
                 ) as s1:
        for model, _ in models:
            register(b1, model, args.tiny_dir if model == "tiny" else args.heavy_dir)
        payloads = tmp / "canned.json"
        payloads.write_text(json.dumps({m: warm(b1, m, body) for m, body in models}))
        floor_cmd = [sys.executable, __file__, "--serve-bare", str(pf), "--payloads",
                     str(payloads)]
        with contextlib.ExitStack() as stack:
            targets = {"w1": (s1.pid, b1)}  # each server's process id and base URL
            if "floor" in args.targets:
                sf = stack.enter_context(process(floor_cmd, dict(os.environ), f"{bf}/ready",
                                                 tmp / "bare.log"))
                targets["floor"] = (sf.pid, bf)
            if "w2" in args.targets:
                s2 = stack.enter_context(process(server_cmd(p2, 2), env,
                                                 f"{b2}/api/v1/health/ready",
                                                 tmp / "server-w2.log"))
                for model, body in models:  # each worker loads a version on first use
                    warm(b2, model, body, parallel=8)
                targets["w2"] = (s2.pid, b2)
            for model, body in models:
                for name in args.targets:  # warm-up, not reported: 1 s at the top concurrency
                    pid, base = targets[name]
                    wrk(binary, f"{base}/v2/models/{model}/infer", body, HEADERS,
                        max(args.concurrency), 1.0, tmp, pid)
                for c in args.concurrency:
                    runs: dict[str, list[Cell]] = {name: [] for name in args.targets}
                    for _ in range(args.repeat):  # the targets' runs interleaved
                        for name in args.targets:
                            pid, base = targets[name]
                            runs[name].append(wrk(binary, f"{base}/v2/models/{model}/infer",
                                                  body, HEADERS, c, args.duration, tmp, pid))
                    for name in args.targets:
                        cells[name][model][c] = median_cell(runs[name])
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per cell, the targets' runs interleaved; each figure of a "
                             "cell is the median of its runs")
    parser.add_argument("--plans", type=Path, default=None,
                        help="keep the authored plans here (reused when present)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="the models to measure (default: both)")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS),
                        help="floor: the bare FastAPI app; w1, w2: ours with --workers 1, 2 "
                             "(default: all)")
    parser.add_argument("--batching", default=None,
                        help="the servers' EDGEFLEET_SERVER_BATCHING JSON (default: max_batch "
                             "32 and the product's other defaults)")
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--payloads", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.payloads)
        return
    binary = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="edgefleet-serving-") as name:
        tmp = Path(name)
        print("authoring the tiny and heavy plans (TensorFlow, in child processes)…",
              file=sys.stderr, flush=True)
        plans = args.plans or tmp
        args.tiny_dir, args.heavy_dir = plans / "tiny", plans / "heavy"
        if not (args.tiny_dir / "plan.tflite").is_file():
            build_digits_plan(args.tiny_dir)
        if not (args.heavy_dir / "plan.tflite").is_file():
            build_heavy_plan(args.heavy_dir)
        env = server_env(tmp, f"sqlite:///{tmp / 'registry.db'}")
        if args.batching is not None:
            env["EDGEFLEET_SERVER_BATCHING"] = args.batching
        args.targets = [t for t in TARGETS if t in args.targets]
        cells = measure(args, tmp, env, binary)
        dirs = {"tiny": (args.tiny_dir, 64), "heavy": (args.heavy_dir, HEAVY_FEATURES)}
        ceilings = {(m, b): ceiling(dirs[m][0], dirs[m][1], b, min(args.duration, 5.0))
                    for m in args.models for b in (1, 32)}
    report(args, cells, ceilings)


if __name__ == "__main__":
    main()

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
ratios compare cells under the same load. ``--models`` and ``--targets`` measure a part of the
table (ratios needing a missing cell are left out).

Run: ``.venv/bin/python bench/bench_serving.py`` (``--duration 10`` per cell by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from _common import ROOT, build_digits_plan, cpu_seconds, free_port, process
from fastapi import FastAPI, Request, Response

ADMIN_KEY, APP_KEY = "bench-admin-key", "bench-app-key"
ADMIN = {"X-Admin-Key": ADMIN_KEY}
HEAVY_FEATURES = 784  # the heavy MLP: 784 -> 3072 -> 3072 -> 10 (_HEAVY)

_HEAVY = (
    "import sys\n"
    "import numpy as np\n"
    "from authoring.plans import build_plan, make_model\n"
    "m = make_model('mlp', sample_shape=(784,), n_classes=10, hidden=(3072, 3072))\n"
    "rng = np.random.default_rng(0)\n"
    "x = rng.random((500, 784), dtype=np.float32); y = rng.integers(0, 10, 500)\n"
    "build_plan(m, sys.argv[1], name='heavy-mlp', feature_names=[f'p{i}' for i in range(784)],\n"
    "           class_labels=[str(i) for i in range(10)], x_reference=x, y_reference=y)\n"
)


# --- plans -----------------------------------------------------------------------------------
def build_heavy_plan(out: Path) -> Path:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _HEAVY, str(out)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=900, check=False)
    if proc.returncode != 0:
        sys.exit(f"building the heavy plan failed:\n{proc.stderr[-3000:]}")
    return out


def register(base: str, model: str, plan_dir: Path) -> None:
    import hashlib

    files = {k: (plan_dir / f).read_bytes() for k, f in (
        ("plan", "plan.tflite"), ("manifest", "manifest.json"), ("weights", "weights.safetensors"))}
    with httpx.Client(base_url=base, timeout=300) as http:
        http.post("/api/v1/models", json={"name": model}, headers=ADMIN).raise_for_status()
        http.post(f"/api/v1/models/{model}/versions", files={k: (k, v) for k, v in files.items()},
                  data={"plan_sha256": hashlib.sha256(files["plan"]).hexdigest(),
                        "weights_sha256": hashlib.sha256(files["weights"]).hexdigest()},
                  headers=ADMIN).raise_for_status()
        http.put(f"/api/v1/models/{model}/aliases/production", json={"version": 1},
                 headers=ADMIN).raise_for_status()


def body_for(features: int) -> bytes:
    data = [float(v % 17) / 16 for v in range(features)]
    return json.dumps({"inputs": [{"name": "x", "shape": [1, features], "datatype": "FP32",
                                   "data": data}]}).encode()


# --- the bare floor (run in its own process by --serve-bare) ----------------------------------
def serve_bare(port: int, payload_file: Path) -> None:
    import uvicorn

    canned: dict[str, str] = json.loads(payload_file.read_text())
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        await request.json()
        return Response(canned[model], media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


# --- wrk -------------------------------------------------------------------------------------
@dataclass
class Cell:
    rps: float
    p50_ms: float
    p99_ms: float
    gen_cores: float
    errors: int
    server_ms: float = 0.0  # the server's CPU time (every thread and worker) per request


def tree_cpu(pid: int) -> float:
    """CPU seconds so far of process ``pid`` and its child processes (uvicorn's workers)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else ():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a worker ended
            total += cpu_seconds(int(child))
    return total


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is not installed: trying `apt-get install -y wrk` (Debian's package)…",
          file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: install it with `apt-get install -y wrk` and run again")
    return found


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    if m is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(binary: str, url: str, body: bytes, headers: dict[str, str], connections: int,
        seconds: float, workdir: Path, server: int) -> Cell:
    script = workdir / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    argv = [binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-s", str(script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = tree_cpu(server)
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    server_cpu = tree_cpu(server) - server_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr or proc.stdout}")
    out = proc.stdout
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if "50" not in pct or "99" not in pct:
        raise RuntimeError(f"wrk reported no latency distribution:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    if errs:
        errors += sum(int(g) for g in errs.groups())
    return Cell(rps, _ms(pct["50"]), _ms(pct["99"]), cpu / wall, errors,
                server_cpu * 1e3 / max(done, 1))


# --- the in-process ceiling --------------------------------------------------------------------
def ceiling(plan_dir: Path, features: int, batch: int, seconds: float) -> Cell:
    from edgefleet.frozen import FrozenRuntime
    from edgefleet.plan import PlanManifest, load_weights

    # what the server runs: the version's serving copy (edgefleet.frozen, server/inference/pool.py)
    manifest = PlanManifest.load(plan_dir / "manifest.json")
    runtime = FrozenRuntime.freeze((plan_dir / "plan.tflite").read_bytes(), manifest,
                                   load_weights(plan_dir / "weights.safetensors",
                                                manifest=manifest))
    x = np.tile(np.asarray([float(v % 17) / 16 for v in range(features)], np.float32),
                (batch, 1))
    for _ in range(5):
        runtime.predict(x)
    times = []
    cpu = time.thread_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        runtime.predict(x)
        times.append(time.perf_counter() - t)
    cpu_ms = (time.thread_time() - cpu) * 1e3 / len(times)
    arr = np.asarray(times) * 1e3
    return Cell(len(times) / float(np.sum(arr) / 1e3), float(np.percentile(arr, 50)),
                float(np.percentile(arr, 99)), 0.0, 0, server_ms=cpu_ms)


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


Cells = dict[str, dict[int, Cell]]
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {APP_KEY}"}


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


MODELS, TARGETS = ("tiny", "heavy"), ("floor", "w1", "w2")
LABELS = {"floor": "floor (bare FastAPI)", "w1": "ours --workers 1", "w2": "ours --workers 2"}


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
                for c in args.concurrency:
                    for name in args.targets:
                        pid, base = targets[name]
                        cells[name][model][c] = wrk(binary, f"{base}/v2/models/{model}/infer",
                                                    body, HEADERS, c, args.duration, tmp, pid)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
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


def report(args: argparse.Namespace, cells: dict[str, Cells],
           ceilings: dict[tuple[str, int], Cell]) -> None:
    cs = args.concurrency
    print(f"\nV2 serving, wrk -t1 keep-alive on 127.0.0.1, {args.duration:g} s per cell, "
          f"{os.cpu_count()} cores; req/s, p50/p99 ms, generator CPU (cores), server CPU "
          "per request (ms, all threads and workers), errors")
    head = f"{'model':6} {'target':22}" + "".join(f" | c={c:<33}" for c in cs)
    print(head)
    print("-" * len(head))
    for model in args.models:
        for target in args.targets:
            line = f"{model:6} {LABELS[target]:22}"
            for c in cs:
                k = cells[target][model][c]
                line += (f" | {k.rps:7.0f} {k.p50_ms:6.2f}/{k.p99_ms:6.2f} {k.gen_cores:4.2f}"
                         f" {k.server_ms:5.3f}{'' if not k.errors else f' E{k.errors}':>4}")
            print(line)
    print("\nin-process ceiling (the serving copy's FrozenRuntime.predict in this process; "
          "CPU: the calling thread's, per call)")
    for (model, batch), k in ceilings.items():
        print(f"{model:6} batch {batch:<3} {k.rps:9.0f} calls/s {k.rps * batch:10.0f} samples/s  "
              f"p50 {k.p50_ms:.3f} ms  p99 {k.p99_ms:.3f} ms  CPU {k.server_ms:.3f} ms")
    c = 32 if 32 in cs else cs[-1]
    print(f"\nratios at c={c}:")
    for line in ratios(cells, ceilings, c):
        print(f"  {line}")


def ratios(cells: dict[str, Cells], ceilings: dict[tuple[str, int], Cell], c: int
           ) -> list[str]:
    """The issue's ratios at concurrency ``c``, for the cells that were measured."""
    def cell(target: str, model: str) -> Cell | None:
        return cells.get(target, {}).get(model, {}).get(c)

    lines: list[str] = []
    t_ours, t_floor, t_two = cell("w1", "tiny"), cell("floor", "tiny"), cell("w2", "tiny")
    if t_ours is not None and t_floor is not None:
        lines.append(
            f"tiny: ours/floor req/s {t_ours.rps / t_floor.rps:.2f} (target >= 0.75); p99 "
            f"ours/floor {t_ours.p99_ms / t_floor.p99_ms:.2f} (target <= 2); server CPU per "
            f"request ours/floor {t_ours.server_ms / max(t_floor.server_ms, 1e-9):.2f}")
    h_ceil = ceilings.get(("heavy", 32))
    for target in ("w1", "w2"):
        h_ours = cell(target, "heavy")
        if h_ours is not None and h_ceil is not None:
            lines.append(
                f"heavy {LABELS[target].removeprefix('ours ')}: ours samples/s / ceiling "
                f"batch-32 samples/s {h_ours.rps / (h_ceil.rps * 32):.2f} (target >= 0.45); "
                f"p99 {h_ours.p99_ms:.1f} ms (target <= 25)")
    if t_ours is not None and t_two is not None:
        lines.append(f"tiny --workers 2 / --workers 1 req/s {t_two.rps / t_ours.rps:.2f} "
                     f"(target >= 1.6; generator used {t_two.gen_cores:.2f} of the cores)")
    return lines


if __name__ == "__main__":
    main()

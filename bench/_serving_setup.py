"""What ``bench_serving.py`` serves and measures: the heavy plan, registering a plan in a running
server, the request body, the bare FastAPI floor and the in-process ceiling.

``build_heavy_plan``
    Author the heavy MLP (784 → 3072 → 3072 → 10) in a child process (TensorFlow only there).
``register``
    Upload a plan directory as version 1 of a model and point its ``production`` alias at it.
``body_for``
    The one-sample V2 JSON body every target is sent.
``serve_bare``
    The floor: a bare FastAPI app (same uvicorn settings) that parses the body with
    ``await request.json()`` and returns our recorded response.
``ceiling``
    The interpreter alone in this process, running what the server runs (the version's serving
    copy, ``edgefleet.frozen.FrozenRuntime``), each call's wall and CPU time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from _common import ROOT
from _serving_wrk import Cell
from fastapi import FastAPI, Request, Response

ADMIN_KEY, APP_KEY = "bench-admin-key", "bench-app-key"
ADMIN = {"X-Admin-Key": ADMIN_KEY}
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {APP_KEY}"}
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


# --- the bare floor (run in its own process by bench_serving.py --serve-bare) -----------------
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

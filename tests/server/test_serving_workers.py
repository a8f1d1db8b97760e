"""``edgefleet server run --workers 2``: both workers follow an alias move and a revocation.

A real two-worker server on SQLite. Each request opens a new connection, so the kernel spreads
them over both workers; a change made through one worker reaches the other only through the
database's generation counters. After the staleness bound (the refresh interval plus one
refresh), every request answers the new version, and a revoked device token is refused.

That both workers answered the new version is read from the Prometheus samples each worker
process writes to its own file (``counter_<pid>.db`` in ``PROMETHEUS_MULTIPROC_DIR``,
:mod:`server.metrics`): at least one of them learnt of the move only through the counters.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.multiprocess import MultiProcessCollector

from tests.registry.support import PlanFiles
from tests.server.processes import ADMIN, ENROL_TOKEN, publish, set_alias, start_server

APP_KEY = "workers-app-key-1"
REFRESH_S = 0.1
BOUND_S = 2 * REFRESH_S + 1.0


def _infer(url: str, headers: dict[str, str]) -> tuple[int, str]:
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                        "data": np.linspace(0, 16, 64).tolist()}]}
    r = httpx.post(f"{url}/v2/models/digits/infer", json=body, headers=headers, timeout=30)
    return r.status_code, (r.json().get("model_version") if r.status_code == 200
                           else r.json()["error"])


def _answered_by_pid(metrics_dir: Path, version: int) -> dict[str, float]:
    """Inference requests each process answered with 200 from ``version`` (by its pid)."""
    answered = {}
    for path in sorted(metrics_dir.glob("counter_*.db")):
        pid = path.stem.removeprefix("counter_")
        answered[pid] = sum(
            sample.value
            for metric in MultiProcessCollector.merge([str(path)], accumulate=False)
            if metric.name == "edgefleet_inference_requests"
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("status") == "200"
            and sample.labels.get("version") == str(version))
    return answered


def test_two_workers_follow_an_alias_move_and_a_revocation(
    tmp_path: Path, digits_plan_dir: Path, plan_files: PlanFiles
) -> None:
    weights2 = tmp_path / "weights2.safetensors"
    weights2.write_bytes(plan_files.perturbed_weights(3, 0.5))
    metrics_dir = tmp_path / "metrics"
    server = start_server(tmp_path, f"sqlite:///{tmp_path / 'workers.db'}", workers=2, env={
        "EDGEFLEET_SERVER_INFERENCE_KEYS": f"shop:{APP_KEY}",
        "EDGEFLEET_SERVER_SERVING_REFRESH_S": str(REFRESH_S),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        app = {"Authorization": f"Bearer {APP_KEY}"}
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as admin:
            publish(admin, "digits", digits_plan_dir)
            v2 = publish(admin, "digits", digits_plan_dir, weights=weights2, plan_from=1)
            set_alias(admin, "digits", "production", 1)
            r = admin.post("/api/v1/devices/enroll", json={
                "enrollment_token": ENROL_TOKEN, "device_id": "pi-w", "model": "digits"})
            assert r.status_code == 201, r.text
            device = {"Authorization": f"Bearer {r.json()['device_token']}"}
            time.sleep(BOUND_S)
            assert {_infer(server.url, app) for _ in range(10)} == {(200, "1")}
            assert {_infer(server.url, device)[0] for _ in range(10)} == {200}  # now cached

            set_alias(admin, "digits", "production", v2)
            assert admin.delete("/api/v1/devices/pi-w").status_code == 200
            time.sleep(BOUND_S)
            assert {_infer(server.url, app) for _ in range(20)} == {(200, str(v2))}
            # each request a new connection: the kernel spread the 20 over both workers (a
            # request's sample may reach its file just after its answer: read until all are in)
            for _ in range(50):
                answered = _answered_by_pid(metrics_dir, v2)
                if sum(answered.values()) >= 20:
                    break
                time.sleep(0.1)
            assert sum(answered.values()) == 20, answered
            assert len([n for n in answered.values() if n > 0]) == 2, answered
            refused = {_infer(server.url, device) for _ in range(20)}
            assert {status for status, _ in refused} == {401}
    finally:
        server.stop()

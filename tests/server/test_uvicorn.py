"""The real thing: ``edgefleet server`` as a process, uvicorn on an ephemeral loopback port.

Starts from an empty SQLite database (migrated at start-up), configured by an env file, and
walks the device path over real HTTP: upload, alias, enrol, assignment, conditional download,
telemetry, inference, and limits enforced on the wire.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port
from tests.registry.support import PlanFiles
from tests.server.support import ADMIN, ENROL_TOKEN, sha


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    env_file = tmp_path / "server.env"
    env_file.write_text(
        f"EDGEFLEET_SERVER_DATABASE_URL=sqlite:///{tmp_path / 'db' / 'registry.db'}\n"
        f"EDGEFLEET_SERVER_ARTIFACT_DIR={tmp_path / 'artifacts'}\n"
        "EDGEFLEET_SERVER_ADMIN_KEYS=alice:admin-secret-1\n"
        f"EDGEFLEET_SERVER_ENROLLMENT_TOKENS={ENROL_TOKEN}\n"
        "EDGEFLEET_SERVER_MAX_REQUEST_BYTES=65536\n"
        "EDGEFLEET_SERVER_PUBLIC_INFERENCE=true\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_SERVER_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet_cli",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--env-file",
            str(env_file),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # up to ~20 s
            if proc.poll() is not None:
                break
            try:
                if httpx.get(f"{base}/api/v1/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the server did not become ready")
        if proc.poll() is not None:
            pytest.fail(f"the server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert '"logger": "edgefleet.server.access"' in text  # structured access log on stderr


def test_device_path_over_real_http(server: str, plan_files: PlanFiles) -> None:
    with httpx.Client(base_url=server, timeout=30) as http:
        assert (
            http.post("/api/v1/models", json={"name": "digits"}, headers=ADMIN).status_code == 201
        )
        r = http.post(
            "/api/v1/models/digits/versions",
            files={
                "plan": ("plan.tflite", plan_files.plan),
                "manifest": ("m.json", plan_files.manifest),
                "weights": ("w.safetensors", plan_files.weights),
            },
            data={"plan_sha256": sha(plan_files.plan), "weights_sha256": sha(plan_files.weights)},
            headers=ADMIN,
        )
        assert r.status_code == 201, r.text
        assert (
            http.put(
                "/api/v1/models/digits/aliases/production", json={"version": 1}, headers=ADMIN
            ).status_code
            == 200
        )
        r = http.post(
            "/api/v1/devices/enroll",
            json={"enrollment_token": ENROL_TOKEN, "device_id": "pi-1", "model": "digits"},
        )
        dev = {"Authorization": f"Bearer {r.json()['device_token']}"}
        r = http.get("/api/v1/devices/pi-1/assignment", headers=dev)
        assert r.status_code == 200 and r.json()["version"] == 1
        assert (
            http.get(
                "/api/v1/devices/pi-1/assignment",
                headers={**dev, "If-None-Match": r.headers["etag"]},
            ).status_code
            == 304
        )
        weights_url = r.json()["weights"]["url"]
        with http.stream("GET", weights_url, headers=dev) as stream:
            assert stream.status_code == 200
            body = b"".join(stream.iter_bytes())
        assert body == plan_files.weights and stream.headers["etag"] == f'"{sha(body)}"'
        assert (
            http.get(
                weights_url, headers={**dev, "If-None-Match": stream.headers["etag"]}
            ).status_code
            == 304
        )
        t0 = datetime.now(UTC)
        report = {
            "idempotency_key": "uvicorn-0001",
            "model": "digits",
            "version": 1,
            "window_start": t0.isoformat(),
            "window_end": (t0 + timedelta(minutes=1)).isoformat(),
        }
        first = http.post("/api/v1/devices/pi-1/telemetry", json=report, headers=dev)
        again = http.post("/api/v1/devices/pi-1/telemetry", json=report, headers=dev)
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json() == {"report_id": first.json()["report_id"], "duplicate": True}
        infer = {
            "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]
        }
        r = http.post("/v2/models/digits/infer", json=infer)
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        # limits on the wire: a declared length and a chunked body over the limit
        r = http.post(
            "/v2/models/digits/infer",
            content=b"x" * 70_000,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and "error" in r.json()

        def chunks() -> Iterator[bytes]:
            for _ in range(100):
                yield b" " * 1024

        r = http.post(
            "/v2/models/digits/infer",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413
        assert (
            http.post(
                "/v2/models/digits/infer",
                content=b"{nope",
                headers={"content-type": "application/json"},
            ).status_code
            == 400
        )
        assert http.post("/v2/models/digits/infer", json=infer).status_code == 200  # still serving

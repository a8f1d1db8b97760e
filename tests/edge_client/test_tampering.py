"""End to end with real processes (``edgefleet server run`` under uvicorn, a real agent): a
version whose stored weights, plan or manifest were altered is never served by V2 inference or
by a download and shows as DAMAGED (registry, readiness, log); the scrub and the background
scrub find it; an agent offered a version with a bad or missing signature keeps its model and
reports one ``rejected`` event."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_client.agent import Agent
from edge_client.credentials import enroll
from edgefleet.plan import weights_from_bytes, weights_to_bytes
from tests.edge_client.conftest import MODEL, active, fast_settings, scaled_weights
from tests.edge_client.server_process import ENROLLMENT_TOKEN, ServerProcess

pytestmark = pytest.mark.slow
TOKEN = ENROLLMENT_TOKEN.split(":", 1)[1]


def _flip_signs(data: bytes) -> bytes:
    weights = weights_from_bytes(data)
    first = sorted(weights)[0]
    weights[first] = -weights[first]
    return weights_to_bytes(weights)


def _flip_bytes(data: bytes) -> bytes:
    b = bytearray(data)
    for i in (len(b) // 3, len(b) // 2, len(b) - 9):
        b[i] ^= 0x01
    return bytes(b)


def _relabel(data: bytes) -> bytes:
    manifest = json.loads(data)
    manifest["output"]["class_labels"][1] = "7"
    return json.dumps(manifest, indent=2).encode()


ALTERATIONS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "weights: signs of one kernel": ("weights", _flip_signs),
    "weights: 3 flipped bytes": ("weights", _flip_bytes),
    "plan: truncated": ("plan", lambda d: d[: len(d) - 1024]),
    "manifest: label 1 -> 7": ("manifest", _relabel),
}


@pytest.fixture
def server(tmp_path: Path, digits_plan_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "server")
    proc.root.mkdir()
    proc.start()
    try:
        proc.create_model(MODEL)
        assert proc.upload(MODEL, digits_plan_dir) == 1
        proc.set_alias(MODEL, 1)
        yield proc
    finally:
        proc.stop()


def _tamper(server: ServerProcess, kind: str, change: Callable[[bytes], bytes]) -> None:
    with server.admin() as c:
        info = c.get(f"/api/v1/models/{MODEL}/versions/1").json()
    blob = server.blob(info[kind]["sha256"])
    blob.chmod(0o644)
    blob.write_bytes(change(blob.read_bytes()))


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
def test_an_altered_version_is_never_served_and_shows_as_damaged(
    server: ServerProcess, alteration: str
) -> None:
    kind, change = ALTERATIONS[alteration]
    _tamper(server, kind, change)
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}
    with server.admin() as c:
        answer = c.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)
        assert answer.status_code == 503, answer.text
        assert "damaged" in answer.text.lower()
        assert c.post(f"/v2/models/{MODEL}/infer", json=body).status_code == 503  # production
        download = c.get(f"/api/v1/models/{MODEL}/versions/1/{kind}")
        assert download.status_code == 503 and "damaged" in download.text
        info = c.get(f"/api/v1/models/{MODEL}/versions/1").json()
        assert info["status"] == "DAMAGED" and kind in info["status_reason"]
        ready = c.get("/api/v1/health/ready").json()
        assert ready["status"] == "degraded" and f"{MODEL} v1" in ready["artifacts"]
    scrubbed = server.scrub()
    assert scrubbed.returncode == 1 and f"DAMAGED {MODEL} v1" in scrubbed.stdout, scrubbed
    assert "is DAMAGED and will not be served" in server.log.read_text()


def test_the_background_scrub_finds_damage_nobody_read(
    tmp_path: Path, digits_plan_dir: Path
) -> None:
    proc = ServerProcess(tmp_path / "server")
    proc.root.mkdir()
    os.environ["EDGEFLEET_SERVER_SCRUB_INTERVAL_S"] = "1"
    try:
        proc.start()
    finally:
        del os.environ["EDGEFLEET_SERVER_SCRUB_INTERVAL_S"]
    try:
        proc.create_model(MODEL)
        assert proc.upload(MODEL, digits_plan_dir) == 1
        _tamper(proc, "weights", _flip_signs)
        deadline, status = time.monotonic() + 30, None
        while time.monotonic() < deadline and status != "DAMAGED":
            time.sleep(0.5)
            with proc.admin() as c:  # reading the record reads no blob
                status = c.get(f"/api/v1/models/{MODEL}/versions/1").json()["status"]
        assert status == "DAMAGED"
        assert "scrub: 1 versions checked, 1 damaged" in proc.log.read_text()
    finally:
        proc.stop()


@pytest.mark.parametrize("signature", ["altered", "missing"])
def test_an_agent_refuses_a_bad_or_missing_signature_once(
    server: ServerProcess, tmp_path: Path, digits_plan_dir: Path, signature: str
) -> None:
    settings = fast_settings(tmp_path / "agent")
    enroll(server.url, TOKEN, settings.credentials_path,
           device_id=f"dev-{uuid.uuid4().hex[:8]}", model=MODEL)
    weights = tmp_path / "w2.safetensors"
    weights.write_bytes(scaled_weights(digits_plan_dir, 0.9))
    assert server.upload(MODEL, digits_plan_dir, weights=weights, plan_from_version=1) == 2
    db = sqlite3.connect(server.root / "server.db")
    with db:  # whoever can write the registry's database cannot sign
        if signature == "missing":
            db.execute("UPDATE model_version SET signature = NULL WHERE number = 2")
        else:
            row = db.execute("SELECT signature FROM model_version WHERE number = 1").fetchone()
            db.execute("UPDATE model_version SET signature = ? WHERE number = 2", row)
    db.close()
    with Agent(settings) as agent:
        assert agent.poll() == "installed" and active(agent).info.version == 1
        server.set_alias(MODEL, 2)
        for _ in range(5):
            assert agent.poll() == "rejected"
        assert active(agent).info.version == 1
        assert agent.predict(np.zeros(64)).path == "local"
        events = [e for e in agent.state.get("events") if e["kind"] == "rejected"]
        assert len(events) == 1 and events[0]["version"] == 2
        assert ("not signed" if signature == "missing" else "signature refused") in \
            events[0]["reason"]

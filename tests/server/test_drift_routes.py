"""Fleet drift routes: telemetry summaries in, fleet/device/feature drift reports out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from edgefleet.drift.accumulator import DriftAccumulator
from edgefleet.runtime import PlanRuntime
from tests.server.support import ADMIN, Api

T0 = datetime(2025, 5, 1, tzinfo=UTC)


def summary(api: Api, x: np.ndarray) -> dict[str, Any]:
    files = api.files
    manifest = files.manifest_obj
    assert manifest.reference is not None
    runtime = PlanRuntime.from_bytes(files.plan, manifest, files.weights_arrays())
    acc = DriftAccumulator(manifest.reference, model="digits", version=1)
    acc.update(x, runtime.predict(x))
    return acc.take().model_dump(mode="json")


def post(client: TestClient, headers: dict[str, str], device: str, hour: int, drift: Any) -> None:
    body = {
        "idempotency_key": f"{device}-{hour:06d}",
        "model": "digits",
        "version": 1,
        "window_start": (T0 + timedelta(hours=hour)).isoformat(),
        "window_end": (T0 + timedelta(hours=hour, minutes=59)).isoformat(),
        "drift": drift,
    }
    r = client.post(f"/api/v1/devices/{device}/telemetry", json=body, headers=headers)
    assert r.status_code == 201, r.text


def test_fleet_device_and_feature_drift(api: Api, client: TestClient, digits_data) -> None:  # type: ignore[no-untyped-def]
    api.production()
    x = np.asarray(digits_data.x_test, dtype=np.float32)
    calm, shifted = summary(api, x), summary(api, np.clip(x + 6.0, 0, 16))
    a, b = api.enrol("dev-a"), api.enrol("dev-b")
    for hour in range(2):
        post(client, a, "dev-a", hour, calm)
        post(client, b, "dev-b", hour, calm if hour == 0 else shifted)
    base = "/api/v1/models/digits/versions/1/drift"
    fleet = client.get(base, headers=ADMIN, params={"bucket_minutes": 60})
    assert fleet.status_code == 200, fleet.text
    windows = fleet.json()["windows"]
    assert [w["n_devices"] for w in windows] == [2, 2]
    assert windows[0]["verdict"] == "no_drift" and windows[1]["verdict"] == "drift"
    devices = client.get(f"{base}/devices", headers=ADMIN).json()["devices"]
    verdicts = {d["device_id"]: d["verdict"] for d in devices}
    assert verdicts == {"dev-a": "no_drift", "dev-b": "drift"}
    merged = client.get(f"{base}/summary", headers=ADMIN, params={"device": "dev-a"}).json()
    assert merged["verdict"] == "no_drift" and merged["n_samples"] == 2 * len(x)
    since = (T0 + timedelta(hours=1)).isoformat()
    later = client.get(f"{base}/summary", headers=ADMIN, params={"since": since}).json()
    assert later["n_samples"] == 2 * len(x)  # the second hour only
    features = client.get(
        f"{base}/features",
        headers=ADMIN,
        params=[("feature", "pixel_3_3"), ("feature", "pixel_0_0")],
    ).json()
    assert sorted(f["name"] for f in features["features"]) == ["pixel_0_0", "pixel_3_3"]
    assert (
        client.get(base, headers=ADMIN, params={"since": "2025-05-01T00:00:00"}).status_code == 422
    )
    assert client.get("/api/v1/models/digits/versions/9/drift", headers=ADMIN).status_code == 404
    assert client.get(base).status_code == 401
    impact = client.get(f"{base}/impact", headers=ADMIN)
    assert impact.status_code == 200, impact.text
    body = impact.json()
    assert (body["model"], body["version"], body["devices"]) == ("digits", 1, 2)
    changes = {d["device_id"]: d["change"] for d in body["per_device"]}
    assert changes["dev-a"] is None  # its second summary repeats its first: no new window
    assert changes["dev-b"] is not None and changes["dev-b"] > 0.15  # vs its own first window
    assert client.get(f"{base}/impact").status_code == 401

"""Telemetry intake over HTTP: idempotent, scoped to the device, drift summaries checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from edgefleet.drift import DriftSummary
from tests.server.support import ADMIN, Api

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def report(key: str, **kw: Any) -> dict[str, Any]:
    body = {
        "idempotency_key": key,
        "model": "digits",
        "version": 1,
        "window_start": T0.isoformat(),
        "window_end": (T0 + timedelta(minutes=5)).isoformat(),
        "inference": {"local": 40, "fallback": 2, "errors": 0, "latency_ms_p50": 0.2},
        "local_eval": {"n_examples": 30, "accuracy": 0.9, "loss": 0.31},
    }
    body.update(kw)
    return body


def test_reports_are_stored_once_per_key(api: Api, client: TestClient) -> None:
    api.production()
    dev = api.enrol("pi-1")
    url = "/api/v1/devices/pi-1/telemetry"
    first = client.post(url, json=report("k-000001"), headers=dev)
    assert first.status_code == 201 and first.json()["duplicate"] is False
    again = client.post(url, json=report("k-000001"), headers=dev)
    assert again.status_code == 200 and again.json() == {
        "report_id": first.json()["report_id"],
        "duplicate": True,
    }
    other = client.post(url, json=report("k-000001", dropped_reports=3), headers=dev)
    assert other.status_code == 409 and "different report" in other.json()["detail"]
    stored = client.get("/api/v1/telemetry", params={"device": "pi-1"}, headers=ADMIN).json()
    assert stored["total"] == 1 and stored["items"][0]["inference_local"] == 40
    assert client.get("/api/v1/devices/pi-1", headers=ADMIN).json()["running_version"] == 1


def test_drift_summaries_are_checked_and_stored(api: Api, client: TestClient) -> None:
    api.production()
    dev = api.enrol("pi-1")
    reference = api.files.manifest_obj.reference
    assert reference is not None
    summary = DriftSummary.empty(reference, model="digits", version=1)
    url = "/api/v1/devices/pi-1/telemetry"
    r = client.post(
        url, json=report("k-drift1", drift=summary.model_dump(mode="json")), headers=dev
    )
    assert r.status_code == 201, r.text
    stored = client.get(
        "/api/v1/telemetry", params={"model": "digits", "version": 1}, headers=ADMIN
    )
    assert DriftSummary.parse(stored.json()["items"][0]["drift"]) == summary
    wrong_version = summary.model_copy(update={"version": 2}).model_dump(mode="json")
    r = client.post(url, json=report("k-drift2", drift=wrong_version), headers=dev)
    assert r.status_code == 422 and "v2" in r.json()["detail"]
    bad = summary.model_dump(mode="json")
    bad["schema_version"] = 99
    r = client.post(url, json=report("k-drift3", drift=bad), headers=dev)
    assert r.status_code == 422
    foreign = summary.model_copy(update={"reference_fingerprint": "0" * 64}).model_dump(mode="json")
    r = client.post(url, json=report("k-drift4", drift=foreign), headers=dev)
    assert r.status_code == 422 and "reference" in r.json()["detail"]
    assert client.get("/api/v1/telemetry", headers=ADMIN).json()["total"] == 1


def test_bad_reports_and_scope(api: Api, client: TestClient) -> None:
    api.production()
    a, b = api.enrol("dev-a"), api.enrol("dev-b")
    url = "/api/v1/devices/dev-a/telemetry"
    r = client.post(url, json=report("k-000002"), headers=b)
    assert r.status_code == 403 and "does not belong" in r.json()["detail"]
    assert client.post(url, json=report("k-000002"), headers=ADMIN).status_code == 403
    assert client.post(url, json=report("k-000002")).status_code == 401
    assert client.post(url, json=report("short"), headers=a).status_code == 422
    assert client.post(url, json=report("k-000003", version=5), headers=a).status_code == 404
    naive = report("k-000004", window_start="2025-03-01T00:00:00", window_end="2025-03-01T00:05:00")
    r = client.post(url, json=naive, headers=a)
    assert r.status_code == 422 and "time zone" in r.json()["detail"]
    backwards = report("k-000005", window_end=(T0 - timedelta(hours=1)).isoformat())
    assert client.post(url, json=backwards, headers=a).status_code == 422
    assert client.post(url, json={**report("k-000006"), "extra": 1}, headers=a).status_code == 422
    r = client.get("/api/v1/telemetry", params={"since": "2025-03-01T00:00:00"}, headers=ADMIN)
    assert r.status_code == 422
    assert client.get("/api/v1/telemetry", headers=ADMIN).json()["total"] == 0

"""Hostile requests: every value that no column can hold is refused before any query (400/422),
on SQLite and PostgreSQL alike; implausible telemetry is refused and not stored; each error
has its family's one shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from tests.server.support import ADMIN, ENROL_TOKEN, Api

BIG = [2**31, 2**63, 2**64 + 1]
NOW = datetime.now(UTC).replace(microsecond=0)


def report(key: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "idempotency_key": key,
        "model": "digits",
        "version": 1,
        "window_start": (NOW - timedelta(minutes=5)).isoformat(),
        "window_end": NOW.isoformat(),
        "inference": {"local": 4, "fallback": 0, "errors": 0, "latency_ms_p50": 0.2},
    }
    body.update(kw)
    return body


def refused(r: Any, status: int = 422) -> dict[str, Any]:
    """``r`` is a refusal in the registry API's one error shape."""
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert set(body) <= {"detail", "errors"}
    for issue in body.get("errors", []):
        assert set(issue) == {"loc", "msg", "type"}
    return dict(body)


def stored_reports(client: TestClient) -> int:
    return int(client.get("/api/v1/telemetry", headers=ADMIN).json()["total"])


def test_integers_that_fit_no_column_are_refused(api: Api, client: TestClient) -> None:
    api.production()
    dev = api.enrol("pi-1")
    for n in BIG:
        check_big(api, client, dev, n)
    assert stored_reports(client) == 0


def check_big(api: Api, client: TestClient, dev: dict[str, str], n: int) -> None:
    refused(client.get("/api/v1/models", params={"offset": n}, headers=ADMIN))
    refused(client.get(f"/api/v1/models/digits/versions/{n}", headers=ADMIN))
    refused(client.get(f"/api/v1/models/digits/versions/{n}/weights", headers=dev))
    refused(client.get("/api/v1/telemetry", params={"model": "digits", "version": n},
                       headers=ADMIN))
    refused(client.put("/api/v1/models/digits/aliases/canary", json={"version": n},
                       headers=ADMIN))
    url = "/api/v1/devices/pi-1/telemetry"
    refused(client.post(url, json=report("k-big-0001", inference={"local": n}), headers=dev))
    refused(client.post(url, json=report("k-big-0002", dropped_reports=n), headers=dev))
    refused(client.post(url, json=report("k-big-0003", version=n), headers=dev))
    r = api.upload(full=False, metadata={"plan_from_version": n})
    assert r.status_code == 422 and "plan_from_version" in r.json()["detail"]


def test_nul_and_control_characters_are_refused(api: Api, client: TestClient) -> None:
    api.production()
    dev = api.enrol("pi-1")
    refused(client.get("/api/v1/models/dig%00its", headers=ADMIN))
    r = client.post("/v2/models/dig%00its/infer", json={"inputs": []}, headers=ADMIN)
    assert r.status_code == 400 and set(r.json()) == {"error"}
    enrol = {"enrollment_token": ENROL_TOKEN, "device_id": "pi-2"}
    refused(client.post("/api/v1/devices/enroll", json={**enrol, "labels": {"site": "a\x00"}}))
    refused(client.post("/api/v1/devices/enroll", json={**enrol, "labels": {"s\x00": "a"}}))
    refused(client.post("/api/v1/devices/enroll", json={**enrol, "hardware": {"cpu": "\x00"}}))
    refused(client.post("/api/v1/devices/enroll",
                        json={**enrol, "hardware": {"deep": [[{"x": "\u0007"}]]}}))
    url = "/api/v1/devices/pi-1/telemetry"
    refused(client.post(url, json=report("k-nul-0001", model="dig\x00its"), headers=dev))
    refused(client.post(url, json=report("k-nul\x00-0002"), headers=dev))
    refused(client.put("/api/v1/models/digits/aliases/canary",
                       json={"version": 1, "reason": "x\x00"}, headers=ADMIN))
    refused(client.patch("/api/v1/models/digits", json={"description": "a\x00b"},
                         headers=ADMIN))
    refused(client.post("/api/v1/models", json={"name": "m2", "task": "t\x00"}, headers=ADMIN))
    refused(client.get("/api/v1/models", params={"name": "a\x00"}, headers=ADMIN))
    refused(client.get("/api/v1/versions", params={"federated_run": "r\x00"}, headers=ADMIN))
    refused(client.delete("/api/v1/models/digits/aliases/production",
                          params={"reason": "\x00"}, headers=ADMIN))
    # well-formed names that do not exist are 404 on both backends
    refused(client.get("/api/v1/models/nope", headers=ADMIN), 404)
    refused(client.get("/api/v1/devices/nope", headers=ADMIN), 404)
    r = client.post("/v2/models/nope/infer", json={"inputs": []}, headers=ADMIN)
    assert r.status_code == 404 and "error" in r.json()
    assert client.get("/api/v1/devices/pi-2", headers=ADMIN).status_code == 404  # not enrolled


def test_an_unknown_drift_feature_is_a_422(api: Api, client: TestClient) -> None:
    api.production()
    base = "/api/v1/models/digits/versions/1/drift/features"
    body = refused(client.get(base, params={"feature": "x"}, headers=ADMIN))
    assert "unknown features ['x']" in body["detail"]
    name = api.files.manifest_obj.reference.features[0].name  # type: ignore[union-attr]
    assert client.get(base, params={"feature": name}, headers=ADMIN).status_code == 200


def test_telemetry_only_for_what_the_device_was_assigned(api: Api, client: TestClient) -> None:
    api.production()
    v2 = api.publish()  # published, never assigned
    dev = api.enrol("pi-1")
    url = "/api/v1/devices/pi-1/telemetry"
    r = client.post(url, json=report("k-plaus-01", version=v2), headers=dev)
    assert "not assigned" in refused(r, 403)["detail"]
    api.create_model("other")
    api.publish("other")
    assert api.alias("production", 1, "other").status_code == 200
    r = client.post(url, json=report("k-plaus-02", model="other"), headers=dev)
    assert "another model" in refused(r, 403)["detail"]
    assert stored_reports(client) == 0
    assert client.post(url, json=report("k-plaus-03"), headers=dev).status_code == 201
    assert api.alias("production", v2).status_code == 200
    # v1 was production moments ago (the device may still flush its reports); v2 is now
    assert client.post(url, json=report("k-plaus-04"), headers=dev).status_code == 201
    assert client.post(url, json=report("k-plaus-05", version=v2), headers=dev).status_code == 201
    drift = client.get("/api/v1/telemetry", params={"model": "other"}, headers=ADMIN).json()
    assert drift["total"] == 0 and stored_reports(client) == 3


IMPLAUSIBLE = [
    {"local": -1},
    {"fallback": -5},
    {"errors": -1},
    {"local": "5"},  # a counter is a JSON integer
    {"local": 1.5},
    {"local": True},
    {"latency_ms_p50": -0.1},
]


def test_implausible_counters_are_refused(api: Api, client: TestClient) -> None:
    api.production()
    dev = api.enrol("pi-1")
    for i, inference in enumerate(IMPLAUSIBLE):
        r = client.post("/api/v1/devices/pi-1/telemetry",
                        json=report(f"k-count-{i:02d}", inference=inference), headers=dev)
        refused(r)
    assert stored_reports(client) == 0


FIELDS = [("latency_ms_p50", "inference"), ("latency_ms_p99", "inference"), ("loss", "local_eval")]


def test_non_finite_latencies_and_losses_are_refused(api: Api, client: TestClient) -> None:
    api.production()
    dev = api.enrol("pi-1")
    cases = [(lit, f, h) for lit in ("NaN", "Infinity", "-Infinity", "1e999") for f, h in FIELDS]
    for i, (literal, field, holder) in enumerate(cases):
        body = report(f"k-finite-{i:02d}", local_eval={"n_examples": 3, "accuracy": 0.5})
        body.setdefault(holder, {})[field] = "@"
        text = json.dumps(body).replace('"@"', literal)
        r = client.post("/api/v1/devices/pi-1/telemetry", content=text.encode(),
                        headers={**dev, "content-type": "application/json"})
        assert field in refused(r)["detail"]
    assert stored_reports(client) == 0


def test_times_are_iso_strings_with_a_zone(api: Api, client: TestClient) -> None:
    api.production()
    for value in ("0.5", "1700000000", "2025-03-01T00:00:00", "0001-01-01T00:00:00+05:00"):
        refused(client.get("/api/v1/devices", params={"seen_since": value}, headers=ADMIN))
        refused(client.get("/api/v1/telemetry", params={"since": value}, headers=ADMIN))
        refused(client.get("/api/v1/models/digits/aliases/production", params={"at": value},
                           headers=ADMIN))
    r = client.get("/api/v1/devices", params={"seen_since": "2025-03-01T00:00:00Z"},
                   headers=ADMIN)
    assert r.status_code == 200


def test_version_numbers_are_canonical(api: Api, client: TestClient) -> None:
    api.production()
    assert client.get("/api/v1/models/digits/versions/1", headers=ADMIN).status_code == 200
    assert client.get("/v2/models/digits/versions/1", headers=ADMIN).status_code == 200
    for spelling in ("01", "1.0", "+1", "1e0", "%201", "0x1", "-1", "0"):
        check_spelling(client, spelling)


def check_spelling(client: TestClient, spelling: str) -> None:
    refused(client.get(f"/api/v1/models/digits/versions/{spelling}", headers=ADMIN))
    refused(client.get(f"/api/v1/models/digits/versions/{spelling}/manifest", headers=ADMIN))
    refused(client.get("/api/v1/telemetry", params={"model": "digits", "version": spelling},
                       headers=ADMIN))
    r = client.get(f"/v2/models/digits/versions/{spelling}", headers=ADMIN)
    assert r.status_code == 404 and "error" in r.json()
    refused(client.put("/api/v1/models/digits/aliases/canary", json={"version": "1"},
                       headers=ADMIN))


def test_a_malformed_body_is_a_400_after_authentication(api: Api, client: TestClient) -> None:
    api.production()
    dev = api.enrol("pi-1")
    bad = {"content-type": "application/json"}
    for method, url in [("POST", "/api/v1/models"),
                        ("PUT", "/api/v1/models/digits/aliases/canary"),
                        ("PATCH", "/api/v1/devices/pi-1")]:
        refused(client.request(method, url, content=b"{nope", headers=bad), 401)
        refused(client.request(method, url, content=b"{nope", headers={**bad, **dev}), 403)
        body = refused(client.request(method, url, content=b"{nope", headers={**bad, **ADMIN}),
                       400)
        assert "invalid JSON" in body["detail"] and body["errors"][0]["type"] == "json_invalid"
    url = "/api/v1/devices/pi-1/telemetry"
    refused(client.post(url, content=b"\xff\xfe", headers=bad), 401)
    refused(client.post(url, content=b"{nope", headers={**bad, **dev}), 400)
    r = client.post("/v2/models/digits/infer", content=b"{nope", headers=bad)
    assert r.status_code == 401 and set(r.json()) == {"error"}
    r = client.post("/v2/models/digits/infer", content=b"{nope", headers={**bad, **ADMIN})
    assert r.status_code == 400 and "invalid json" in r.json()["error"].lower()


def test_repeated_single_valued_parameters_are_refused(api: Api, client: TestClient) -> None:
    api.production()
    refused(client.get("/api/v1/models?name=a&name=digits", headers=ADMIN))
    r = client.get("/api/v1/versions?metric=accuracy>=0&metric=accuracy<=1", headers=ADMIN)
    assert r.status_code == 200  # a list parameter may repeat


def test_an_admin_key_does_not_excuse_a_malformed_authorization(client: TestClient) -> None:
    r = client.get("/api/v1/models", headers={**ADMIN, "Authorization": "garbage"})
    assert "malformed Authorization" in refused(r, 401)["detail"]


def test_no_redirects_for_trailing_slashes(api: Api, client: TestClient) -> None:
    api.production()
    r = client.get("/api/v1/models/", headers={**ADMIN, "Host": "evil.example"},
                   follow_redirects=False)
    assert r.status_code == 404 and "location" not in r.headers
    assert client.get("/api/v1/models", headers=ADMIN).status_code == 200


def test_openapi_documents_every_status_with_its_family_body(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    methods = ("get", "put", "post", "patch", "delete")
    for path, item in doc["paths"].items():
        family = "V2Error" if path.startswith("/v2") else "ErrorBody"
        for method, op in item.items():
            if method not in methods:
                continue
            responses = op["responses"]
            assert "500" in responses, (path, method)
            if op.get("parameters") or op.get("requestBody"):
                assert ("400" if family == "V2Error" else "422") in responses, (path, method)
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                assert {"400", "413"} <= set(responses), (path, method)
            if "{" in path and not path.startswith("/api/v1/health"):
                assert "404" in responses, (path, method)
            for status, declared in responses.items():
                if status.startswith(("4", "5")) and "content" in declared:
                    ref = declared["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith(family), (path, method, status)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error = doc["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["detail"] and error["properties"]["detail"]["type"] == "string"


def test_a_v2_request_id_is_one_bounded_line(api: Api, client: TestClient) -> None:
    api.production()
    row = {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    url = "/v2/models/digits/infer"
    for bad in ("a\x00b", "line\nbreak", "x" * 257):
        r = client.post(url, json={"id": bad, "inputs": [row]}, headers=ADMIN)
        assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
        assert "id" in r.json()["error"] and bad not in r.text
    r = client.post(url, json={"id": "req-" + "7" * 252, "inputs": [row]}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["id"] == "req-" + "7" * 252

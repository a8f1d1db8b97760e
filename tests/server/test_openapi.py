"""The OpenAPI document declares the real error responses; 422s do not echo the request."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.server.support import ADMIN, ENROL_TOKEN

ERROR_REF = "#/components/schemas/ErrorBody"


def _schema_ref(response: dict[str, Any]) -> str:
    return str(response["content"]["application/json"]["schema"]["$ref"])


def test_routes_declare_their_error_responses(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    alias = paths["/api/v1/models/{model}/aliases/{alias}"]
    assert {"401", "403", "404", "409"} <= set(alias["put"]["responses"])
    assert {"401", "403", "404"} <= set(alias["get"]["responses"])
    assert _schema_ref(alias["put"]["responses"]["409"]) == ERROR_REF
    assert _schema_ref(alias["get"]["responses"]["404"]) == ERROR_REF
    upload = paths["/api/v1/models/{model}/versions"]["post"]
    assert {"400", "401", "403", "404", "409", "413", "422"} <= set(upload["responses"])
    enroll = paths["/api/v1/devices/enroll"]["post"]
    assert {"401", "403", "409"} <= set(enroll["responses"])
    assert doc["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]


def test_the_upload_metadata_schema_is_a_named_component(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "VersionPublish" in schemas and "metrics" in schemas["VersionPublish"]["properties"]
    upload = doc["paths"]["/api/v1/models/{model}/versions"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    metadata = form["properties"]["metadata"]
    assert metadata["contentSchema"] == {"$ref": "#/components/schemas/VersionPublish"}
    assert "#/components/schemas/VersionPublish" in upload["description"]
    # every reference in the document resolves
    text = str(doc)
    for name in ("VersionPublish", "ErrorBody", "ValidationIssue"):
        assert f"#/components/schemas/{name}" in text and name in schemas


def test_validation_errors_do_not_echo_the_request(client: TestClient) -> None:
    secret = "do-not-echo-" + "s" * 2000
    r = client.post(
        "/api/v1/devices/enroll",
        json={"enrollment_token": ENROL_TOKEN, "device_id": "../x", "note": secret},
    )
    assert r.status_code == 422
    body = r.json()
    assert isinstance(body["detail"], str) and "device_id" in body["detail"]
    issues = body["errors"]
    assert issues and all(set(issue) == {"loc", "msg", "type"} for issue in issues)
    assert issues[0]["loc"] == ["body", "device_id"] and issues[0]["msg"]
    assert ENROL_TOKEN not in r.text and secret not in r.text
    r = client.post("/api/v1/models", json={"name": secret}, headers=ADMIN)
    assert r.status_code == 422 and secret not in r.text and len(r.text) < 1000

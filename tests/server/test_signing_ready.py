"""While the server's signing key cannot be loaded and recorded, nothing is published unsigned
and no device enrols without a key to pin (503 saying why); once it can, the next request loads
it and the version is signed (SQLite and PostgreSQL)."""

from __future__ import annotations

import warnings
from pathlib import Path

from sqlalchemy import Engine

from registry.audit import AuditQuery, list_records
from registry.db import session_scope
from registry.models import ModelVersion
from registry.signing import public_keys, verify_version_signature
from server.main import create_app
from tests.registry.support import PlanFiles
from tests.server.support import ADMIN, ENROL_TOKEN, Api, make_settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_nothing_is_stored_unsigned_until_signing_is_ready(
    engine: Engine, db_url: str, tmp_path: Path, plan_files: PlanFiles
) -> None:
    settings = make_settings(db_url, tmp_path)
    blocker = settings.signing_key_path.parent
    blocker.write_text("a file where the key's directory belongs")  # the key cannot be created
    enrol = {"enrollment_token": ENROL_TOKEN, "device_id": "pi-1", "model": "digits"}
    with TestClient(create_app(settings)) as client:
        api = Api(client, plan_files)
        api.create_model()
        refused = api.upload()
        assert refused.status_code == 503, refused.text
        assert "version signing is not ready" in refused.json()["detail"]
        assert "nothing was stored" in refused.json()["detail"]
        r = client.post("/api/v1/devices/enroll", json=enrol)
        assert r.status_code == 503 and "version signing" in r.json()["detail"], r.text
        listed = client.get("/api/v1/models/digits/versions", headers=ADMIN).json()
        assert listed["items"] == []
        assert client.get("/api/v1/devices/pi-1", headers=ADMIN).status_code == 404

        blocker.unlink()  # the operator fixes the key's directory: no restart needed
        r = api.upload()
        assert r.status_code == 201, r.text
        signature = r.json()["signature"]
        assert signature is not None
        r = client.post("/api/v1/devices/enroll", json=enrol)
        assert r.status_code == 201, r.text
        assert r.json()["signing_key"]["key_id"] == signature["key_id"]
    with session_scope(engine) as s:
        version = s.get(ModelVersion, 1)
        assert version is not None and version.number == 1
        assert version.signing_key_id == signature["key_id"]
        assert verify_version_signature(version, "digits", public_keys(s)) is None
        trail = [(r.action, r.target) for r in list_records(s, AuditQuery(limit=100))
                 if r.action != "settings.change"]  # the start-up's record of its settings
    assert trail == [("model.create", "digits"), ("key.create", f"key/{signature['key_id']}"),
                     ("version.publish", "digits/1"), ("device.enrol", "device/pi-1")]

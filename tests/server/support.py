"""Helpers and fixtures of the server tests (the app over real HTTP semantics, both backends).

Fixtures: ``settings`` (per backend, a fresh artifact directory, known keys), ``client`` (a
started app), ``api`` (a small helper that uploads plans, enrols devices and moves aliases
through the HTTP API).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

with warnings.catch_warnings():  # Starlette suggests httpx2; httpx is what the project uses
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from server.main import create_app
from server.settings import ServerSettings
from tests.registry.support import PlanFiles

ADMIN_KEY = "alice:admin-secret-1"
ADMIN = {"X-Admin-Key": "admin-secret-1"}
ENROL_TOKEN = "enrol-secret-1"
APP_KEY = "app-secret-1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_settings(db_url: str, tmp_path: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "artifact_dir": tmp_path / "artifacts",
        "signing_key_path": tmp_path / "keys" / "signing-ed25519.pem",
        "admin_keys": [ADMIN_KEY],
        "enrollment_tokens": [ENROL_TOKEN],
        "inference_keys": [f"shop:{APP_KEY}"],
        "auto_migrate": False,
        "last_seen_interval_s": 0,
        # in-process test apps write the inference log from their thread (a child process
        # each would add its start-up to every test); the served processes of the end-to-end
        # tests use the default, the child (tests/server/test_evidence_process.py covers it)
        "inference_log_process": False,
    }
    values.update(overrides)
    return ServerSettings(**values)


@pytest.fixture
def settings(engine: Engine, db_url: str, tmp_path: Path) -> ServerSettings:
    return make_settings(db_url, tmp_path)


@pytest.fixture
def client(settings: ServerSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@dataclass
class Api:
    """Shortcuts over the HTTP API for arranging a test."""

    client: TestClient
    files: PlanFiles

    def create_model(self, name: str = "digits", **kw: Any) -> httpx.Response:
        r = self.client.post("/api/v1/models", json={"name": name, **kw}, headers=ADMIN)
        assert r.status_code == 201, r.text
        return r

    def upload(
        self,
        model: str = "digits",
        *,
        plan: bytes | None = None,
        manifest: bytes | None = None,
        weights: bytes | None = None,
        metadata: dict[str, Any] | None = None,
        declared: dict[str, str] | None = None,
        full: bool = True,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST a version; ``full`` sends the session plan's files unless overridden."""
        parts = {"weights": weights if weights is not None else self.files.weights}
        if full:
            parts["plan"] = plan if plan is not None else self.files.plan
            parts["manifest"] = manifest if manifest is not None else self.files.manifest
        data = {f"{k}_sha256": sha(v) for k, v in parts.items() if k != "manifest"}
        data.update(declared or {})
        data["metadata"] = json.dumps(metadata or {})
        return self.client.post(
            f"/api/v1/models/{model}/versions",
            files={k: (k, v, "application/octet-stream") for k, v in parts.items()},
            data=data,
            headers=ADMIN if headers is None else headers,
        )

    def publish(self, model: str = "digits", **kw: Any) -> int:
        r = self.upload(model, **kw)
        assert r.status_code == 201, r.text
        return int(r.json()["version"])

    def alias(self, alias: str, version: int, model: str = "digits", **kw: Any) -> httpx.Response:
        r = self.client.put(
            f"/api/v1/models/{model}/aliases/{alias}",
            json={"version": version, **kw},
            headers=ADMIN,
        )
        return r

    def enrol(self, device_id: str, model: str | None = "digits") -> dict[str, str]:
        body: dict[str, Any] = {"enrollment_token": ENROL_TOKEN, "device_id": device_id}
        if model:
            body["model"] = model
        r = self.client.post("/api/v1/devices/enroll", json=body)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['device_token']}"}

    def production(self, model: str = "digits") -> int:
        """A model with one published version in production (its number)."""
        self.create_model(model)
        version = self.publish(model)
        assert self.alias("production", version, model).status_code == 200
        return version


@pytest.fixture
def api(client: TestClient, plan_files: PlanFiles) -> Api:
    return Api(client, plan_files)

"""Liveness and readiness: live while the process answers, ready only with a database."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from server.main import create_app
from server.settings import ServerSettings


def test_not_ready_without_a_database(tmp_path: Path) -> None:
    settings = ServerSettings(
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        artifact_dir=tmp_path / "artifacts",
        auto_migrate=False,
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/health/live").status_code == 200
        assert client.get("/v2/health/live").json() == {"live": True}
        r = client.get("/api/v1/health/ready")
        assert r.status_code == 503 and r.json()["database"].startswith("unavailable")
        assert r.json()["store"] == "ok"
        assert client.get("/v2/health/ready").json() == {"ready": False}


def test_not_ready_before_migrations(tmp_path: Path) -> None:
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path / 'empty.db'}",
        artifact_dir=tmp_path / "artifacts",
        auto_migrate=False,
    )
    with TestClient(create_app(settings)) as client:
        r = client.get("/api/v1/health/ready")
        assert r.status_code == 503 and r.json()["schema"].startswith("at None")
    with TestClient(create_app(settings.model_copy(update={"auto_migrate": True}))) as client:
        assert client.get("/api/v1/health/ready").json()["status"] == "ready"

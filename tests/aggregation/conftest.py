"""A real EdgeFleet server (uvicorn on 127.0.0.1, SQLite) with the digits plan registered."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.plan import sha256_bytes
from tests.ports import free_port

ADMIN_KEY = "agg-tests:0123456789abcdef"


@pytest.fixture(scope="module")
def digits() -> tuple[Any, Any, Any]:
    """scikit-learn's digits as float32 inputs, labels, and their drift reference profile."""
    from sklearn.datasets import load_digits

    from edgefleet.drift import build_reference

    x, y = load_digits(return_X_y=True)
    return x.astype("float32"), y, build_reference(x, y, [f"p{i}" for i in range(64)], 10)


@dataclass(frozen=True)
class Server:
    url: str
    admin_key: str

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-Admin-Key": self.admin_key},
                            timeout=30)



@contextmanager
def serve(asgi_app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free loopback port; yield its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The EdgeFleet server (SQLite) on a free loopback port; stopped after the module."""
    from server.main import create_app
    from server.settings import ServerSettings

    root = tmp_path_factory.mktemp("server")
    settings = ServerSettings(
        database_url=f"sqlite:///{root / 'db.sqlite3'}", artifact_dir=root / "artifacts",
        signing_key_path=root / "keys" / "signing-ed25519.pem",
        admin_keys=[ADMIN_KEY], log_level="WARNING",
    )
    with serve(create_app(settings)) as url:
        yield Server(url, ADMIN_KEY.split(":", 1)[1])


def register_plan(server: Server, model: str, plan_dir: Path, *, alias: str = "production") -> int:
    """Create ``model`` and upload the plan directory as its first version; point ``alias``."""
    plan = (plan_dir / "plan.tflite").read_bytes()
    manifest = (plan_dir / "manifest.json").read_bytes()
    weights = (plan_dir / "weights.safetensors").read_bytes()
    with server.http() as http:
        http.post("/api/v1/models", json={"name": model}).raise_for_status()
        resp = http.post(
            f"/api/v1/models/{model}/versions",
            data={"metadata": '{"description": "initial"}', "plan_sha256": sha256_bytes(plan),
                  "manifest_sha256": sha256_bytes(manifest),
                  "weights_sha256": sha256_bytes(weights)},
            files={"plan": ("plan.tflite", plan), "manifest": ("manifest.json", manifest),
                   "weights": ("weights.safetensors", weights)},
        )
        resp.raise_for_status()
        version = int(resp.json()["version"])
        http.put(f"/api/v1/models/{model}/aliases/{alias}",
                 json={"version": version}).raise_for_status()
    return version

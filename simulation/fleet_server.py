"""The fleet's server side: start ``edgefleet server run``, register the initial plan, read back.

:func:`start_server` runs the real server (uvicorn, SQLite database and artifact store in the
fleet's work dir, a generated admin key and enrolment token) under a
:class:`~simulation.processes.ProcessSupervisor`. :class:`AdminClient` is the fleet's admin view
of the REST API: it uploads the initial plan directory and points ``production`` at it, and
afterwards reads the versions, aliases and per-device drift the summary prints.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgefleet.plan import sha256_bytes
from edgefleet.wire import API_PREFIX, AliasInfo, Page, VersionInfo
from simulation.errors import FleetError
from simulation.processes import Child, ProcessSupervisor, free_port


@dataclass(frozen=True)
class ServerHandle:
    """A running server: its URL and the secrets generated for it."""

    url: str
    admin_key: str
    enrollment_token: str
    child: Child


def start_server(sup: ProcessSupervisor, root: Path, *, timeout_s: float = 60.0,
                 poll_interval_s: float = 2.0) -> ServerHandle:
    """Start the server on a free 127.0.0.1 port with its data under ``root``; wait until ready.

    ``poll_interval_s`` is the assignment poll interval the server suggests to devices.
    """
    root.mkdir(parents=True, exist_ok=True)
    admin, token = secrets.token_hex(16), secrets.token_hex(16)
    port = free_port()
    env = {
        "EDGEFLEET_SERVER_DATABASE_URL": f"sqlite:///{root / 'server.db'}",
        "EDGEFLEET_SERVER_ARTIFACT_DIR": str(root / "artifacts"),
        "EDGEFLEET_SERVER_ADMIN_KEYS": f"fleet-admin:{admin}",
        "EDGEFLEET_SERVER_ENROLLMENT_TOKENS": f"fleet-enrol:{token}",
        "EDGEFLEET_SERVER_POLL_INTERVAL_S": str(poll_interval_s),
        "EDGEFLEET_SERVER_LAST_SEEN_INTERVAL_S": "0",
        "EDGEFLEET_SERVER_LOG_FORMAT": "text",
        "EDGEFLEET_SERVER_ROLLOUT_TICK_S": "1",  # rollout steps are seconds long here
    }
    child = sup.start("server", [sys.executable, "-m", "edgefleet_cli", "server", "run",
                                 "--host", "127.0.0.1", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/health/ready", child, timeout_s, what="the server")
    return ServerHandle(url, admin, token, child)


def wait_http(url: str, child: Child, timeout_s: float, *, what: str) -> None:
    """Wait until ``GET url`` answers 200 (or ``child`` exits, or the deadline passes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise FleetError(f"{what} exited with code {child.proc.returncode} "
                             f"(log {child.log_path}):\n{child.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise FleetError(f"{what} was not ready in {timeout_s:.0f} s (log {child.log_path}):\n"
                     f"{child.tail()}")


class AdminClient:
    """Admin calls of the registry REST API the fleet needs (``X-Admin-Key``)."""

    def __init__(self, url: str, admin_key: str, *, timeout_s: float = 60.0) -> None:
        self._http = httpx.Client(base_url=url + API_PREFIX, timeout=timeout_s,
                                  headers={"X-Admin-Key": admin_key})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ok(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            raise FleetError(f"{resp.request.method} {resp.request.url} -> {resp.status_code}: "
                             f"{resp.text[:500]}")
        return resp.json()

    # --- writes --------------------------------------------------------------------------------
    def publish_plan(self, model: str, plan_dir: Path, *, metrics: dict[str, float],
                     description: str, alias: str = "production") -> int:
        """Create ``model`` (if new), upload the plan directory as a version, point ``alias``."""
        resp = self._http.post("/models", json={"name": model, "task": "classification",
                                                "description": description})
        if resp.status_code != 409:
            self._ok(resp)
        files = {name: (name, (plan_dir / name).read_bytes())
                 for name in ("plan.tflite", "manifest.json", "weights.safetensors")}
        meta = {"description": description, "metrics": metrics}
        data = {"metadata": json.dumps(meta),
                "plan_sha256": sha256_bytes(files["plan.tflite"][1]),
                "manifest_sha256": sha256_bytes(files["manifest.json"][1]),
                "weights_sha256": sha256_bytes(files["weights.safetensors"][1])}
        upload = {"plan": files["plan.tflite"], "manifest": files["manifest.json"],
                  "weights": files["weights.safetensors"]}
        version = int(self._ok(self._http.post(f"/models/{model}/versions", data=data,
                                               files=upload))["version"])
        self._ok(self._http.put(f"/models/{model}/aliases/{alias}",
                                json={"version": version, "reason": description}))
        return version

    # --- reads ---------------------------------------------------------------------------------
    def versions(self, model: str) -> list[VersionInfo]:
        """Every version of ``model``, oldest first."""
        page = Page[VersionInfo].model_validate(
            self._ok(self._http.get(f"/models/{model}/versions", params={"limit": 200})))
        return sorted(page.items, key=lambda v: v.version)

    def aliases(self, model: str) -> dict[str, AliasInfo]:
        body = self._ok(self._http.get(f"/models/{model}/aliases"))
        infos = [AliasInfo.model_validate(a) for a in body]
        return {a.alias: a for a in infos}

    def device_drift(self, model: str, version: int) -> dict[str, dict[str, Any]]:
        """Each device's merged drift over all its reports of ``version``, by device id."""
        body = self._ok(self._http.get(f"/models/{model}/versions/{version}/drift/devices"))
        return {str(d["device_id"]): d for d in body.get("devices", [])}

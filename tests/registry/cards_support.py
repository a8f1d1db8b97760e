"""After a whole fleet ran (``simulation.fleet.run_fleet``): restart its server on the fleet's
database, roll the newest federated version out to production through the rollout controller,
and read the version's model card and the audit trail.

Used by ``tests/simulation/test_fleet.py`` on its fleet (one fleet run serves both). The fleet's
devices have stopped, so the rollout's evidence is REST traffic: sixteen applications (one
inference key each) send digits test rows to the model's V2 endpoint (production answers), and
then to the candidate by its version number, each followed by the true labels as feedback; the
rollout's one guard, ``feedback_accuracy``, compares the candidate with production on those
labels, and an operator approves the promotion.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.main import create_app
from server.settings import ServerSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

OPERATOR = "card-ops:card-ops-secret-1"
HEADERS = {"X-Admin-Key": "card-ops-secret-1"}
APPS = [f"shop{i}:shop-secret-{i:02d}" for i in range(16)]
ROWS = 12


@dataclass
class FleetCard:
    """What the restarted server says about ``version``."""

    version: int
    card: dict[str, Any]
    markdown: str
    rollout: dict[str, Any]
    runs: list[dict[str, Any]]
    rollout_trail: list[dict[str, Any]]
    verify: dict[str, Any]


def _settings(workdir: Path) -> ServerSettings:
    root = workdir / "server"
    return ServerSettings(
        database_url=f"sqlite:///{root / 'server.db'}", artifact_dir=root / "artifacts",
        admin_keys=[OPERATOR], inference_keys=APPS, auto_migrate=True, rollout_tick_s=0.2,
        log_level="WARNING",
    )


def _traffic(c: TestClient, path: str, x: np.ndarray, y: np.ndarray, tag: str) -> None:
    """Every application infers ``ROWS`` rows at ``path``, then sends their true labels."""
    for i, app in enumerate(APPS):
        auth = {"Authorization": f"Bearer {app.split(':', 1)[1]}"}
        rows = slice(i * ROWS % len(x), i * ROWS % len(x) + ROWS)
        request_id = f"{tag}-{i}"
        r = c.post(path, headers={**auth, "X-Request-ID": request_id},
                   json={"inputs": [{"name": "x", "shape": [ROWS, x.shape[1]],
                                     "datatype": "FP32", "data": x[rows].ravel().tolist()}]})
        assert r.status_code == 200, r.text
        assert c.app.state.inference_log.flush(10)  # type: ignore[attr-defined]
        items = [{"request_id": request_id, "row_index": j, "label": str(int(label))}
                 for j, label in enumerate(y[rows])]
        r = c.post("/api/v1/feedback", headers=auth, json={"items": items})
        assert r.status_code == 200 and r.json()["applied"] == ROWS, r.text


def _wait_state(c: TestClient, rollout_id: int, state: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        info: dict[str, Any] = c.get(f"/api/v1/rollouts/{rollout_id}", headers=HEADERS).json()
        if info["state"] == state or time.monotonic() > deadline:
            return info
        time.sleep(0.2)


def promote_and_read_card(workdir: Path, model: str, version: int, x: np.ndarray,
                          y: np.ndarray) -> FleetCard:
    """Restart the fleet's server, promote ``version`` by a guarded, approved rollout (REST
    traffic ``x`` with true labels ``y`` as its evidence), and read the version's card."""
    with TestClient(create_app(_settings(workdir))) as c:
        _traffic(c, f"/v2/models/{model}/infer", x, y, "baseline")  # production answers
        r = c.post("/api/v1/rollouts", headers=HEADERS, json={
            "model": model, "candidate": version, "strategy": "canary",
            "guards": [{"kind": "feedback_accuracy", "margin": 0.05, "min_samples": 30}],
            "steps": [{"percent": 50, "bake_s": 0, "timeout_s": 300}], "approval": True,
            "reason": "federated round beat production on the holdout"})
        assert r.status_code == 201, r.text
        rollout_id = r.json()["id"]
        _traffic(c, f"/v2/models/{model}/versions/{version}/infer", x, y, "candidate")
        waiting = _wait_state(c, rollout_id, "awaiting_approval")
        assert waiting["state"] == "awaiting_approval", waiting
        r = c.post(f"/api/v1/rollouts/{rollout_id}/approve", headers=HEADERS,
                   json={"reason": "holdout and canary look good"})
        assert r.status_code == 200, r.text
        card_url = f"/api/v1/models/{model}/versions/{version}/card"
        runs = c.get("/api/v1/audit", params={"action": "run.*"}, headers=HEADERS).json()
        trail = c.get("/api/v1/audit", params={"target": f"{model}/rollouts/{rollout_id}"},
                      headers=HEADERS).json()
        return FleetCard(
            version=version,
            card=c.get(card_url, headers=HEADERS).json(),
            markdown=c.get(card_url, params={"format": "markdown"}, headers=HEADERS).text,
            rollout=r.json(),
            runs=runs["items"],
            rollout_trail=trail["items"],
            verify=c.get("/api/v1/audit/verify", headers=HEADERS).json(),
        )

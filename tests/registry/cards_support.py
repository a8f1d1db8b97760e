"""After a whole fleet ran its loop (``simulation.fleet.run_fleet``, ``loop=True``): restart its
server on the fleet's database and read the model card of the version the fleet's rollout
promoted, the run's audit records and the trail of that rollout.

Used by ``tests/simulation/test_fleet.py`` on its fleet (one fleet run serves both). The fleet's
devices have stopped; before reading, sixteen applications (one inference key each) send digits
test rows to the model's V2 endpoint (production, the promoted version, answers), each followed
by the true labels as feedback, so the card also shows REST evidence. An operator-approved
promotion on a card is ``tests/registry/test_cards.py``'s.
"""

from __future__ import annotations

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


def read_promoted_card(workdir: Path, model: str, version: int, x: np.ndarray,
                       y: np.ndarray) -> FleetCard:
    """Restart the fleet's server, send REST traffic ``x`` with true labels ``y`` to production
    (``version``), and read the version's card, the run's audit records and the audit trail of
    the rollout that promoted it (its last promoted rollout)."""
    with TestClient(create_app(_settings(workdir))) as c:
        _traffic(c, f"/v2/models/{model}/infer", x, y, "production")
        card_url = f"/api/v1/models/{model}/versions/{version}/card"
        card = c.get(card_url, headers=HEADERS).json()
        promoted = [r["id"] for r in card["promotion"]["rollouts"] if r["state"] == "promoted"]
        assert promoted, card["promotion"]
        rollout_id = promoted[-1]
        runs = c.get("/api/v1/audit", params={"action": "run.*"}, headers=HEADERS).json()
        trail = c.get("/api/v1/audit", params={"target": f"{model}/rollouts/{rollout_id}"},
                      headers=HEADERS).json()
        return FleetCard(
            version=version,
            card=card,
            markdown=c.get(card_url, params={"format": "markdown"}, headers=HEADERS).text,
            rollout=c.get(f"/api/v1/rollouts/{rollout_id}", headers=HEADERS).json(),
            runs=runs["items"],
            rollout_trail=trail["items"],
            verify=c.get("/api/v1/audit/verify", headers=HEADERS).json(),
        )

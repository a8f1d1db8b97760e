"""``RegistryClient.fleet_drift`` against the fleet drift report the server's drift code makes.

The test serves ``GET /api/v1/models/{m}/versions/{v}/drift`` -> ``FleetDriftReport`` (the shape
of ``server/api/routes/drift.py``) from the real ``server.drift.fleet_over_time`` on real device
summaries, over real HTTP, beside the production alias, so the client is held to the report's
actual JSON.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from fastapi import FastAPI, HTTPException

from aggregation.controller import ControllerPolicy, DriftController
from aggregation.registry_client import RegistryClient
from edgefleet.drift import DriftAccumulator, build_reference
from server.drift import DriftRecord, fleet_over_time
from server.drift.impact import fleet_impact
from tests.aggregation.conftest import serve

T0 = datetime(2025, 3, 1, tzinfo=UTC)
NAMES = [f"f{i}" for i in range(6)]


def drift_app(shift_after: int | None, accuracy: float | None = None, *,
              impact: bool = False) -> FastAPI:
    """Production is v3; devices report hourly windows, shifted from window ``shift_after``;
    with ``accuracy``, every row is labelled and predicted right that often (validation 0.9);
    with ``impact``, the app also serves ``.../drift/impact`` (``server.drift.fleet_impact``)."""
    rng = np.random.default_rng(0)
    reference = build_reference(rng.normal(size=(3000, 6)), np.zeros(3000, int), NAMES, 2)
    records = []
    for w in range(4):
        for device in ("a", "b", "c"):
            acc = DriftAccumulator(reference, model="digits", version=3)
            loc = 1.5 if shift_after is not None and w >= shift_after else 0.0
            if accuracy is None:
                acc.update(rng.normal(loc=loc, size=(400, 6)))
            else:
                labels = rng.integers(0, 2, size=400)
                right = rng.random(400) < accuracy
                probs = np.where((labels == 1) == right, 0.8, 0.2)[:, None] * [-1, 1] + [1, 0]
                acc.update(rng.normal(loc=loc, size=(400, 6)), probs, labels)
            start = T0 + timedelta(hours=w)
            records.append(DriftRecord(device, "digits", 3, start, start + timedelta(minutes=50),
                                       acc.to_summary()))
    app = FastAPI()

    @app.get("/api/v1/models/{model}/aliases/{alias}")
    def alias(model: str, alias: str) -> dict[str, object]:
        if model != "digits" or alias != "production":
            raise HTTPException(404, f"no alias {alias!r}")
        return {"model": model, "alias": alias, "version": 3, "updated_at": T0.isoformat(),
                "updated_by": "test"}

    @app.get("/api/v1/models/{model}/versions/{version}/drift")
    def drift(model: str, version: int) -> dict[str, object]:
        report = fleet_over_time(records, reference, model=model, version=version,
                                 validation_accuracy=0.9)
        return report.model_dump(mode="json")

    if impact:
        @app.get("/api/v1/models/{model}/versions/{version}/drift/impact")
        def drift_impact(model: str, version: int) -> dict[str, object]:
            return fleet_impact(records, reference, model=model,
                                version=version).model_dump(mode="json")

    return app


def test_fleet_drift_reads_the_servers_verdict() -> None:
    with serve(drift_app(shift_after=2)) as url, RegistryClient(url, retries=0) as client:
        drifted = client.fleet_drift("digits")
        assert drifted is not None and drifted.drifted and drifted.version == 3
        assert drifted.score > 0.5
        assert client.fleet_drift("other-model") is None
    with serve(drift_app(shift_after=None)) as url, RegistryClient(url, retries=0) as client:
        calm = client.fleet_drift("digits")
        assert calm is not None and not calm.drifted


def test_fleet_drift_reads_the_servers_performance_verdict() -> None:
    with serve(drift_app(None, accuracy=0.7)) as url, RegistryClient(url, retries=0) as client:
        worse = client.fleet_drift("digits")
        assert worse is not None and not worse.drifted and worse.performance_drifted
        assert worse.signals == ["performance"] and worse.triggered
    with serve(drift_app(None, accuracy=0.9)) as url, RegistryClient(url, retries=0) as client:
        same = client.fleet_drift("digits")
        assert same is not None and not same.triggered


def test_fleet_drift_prefers_the_servers_impact_reading() -> None:
    with serve(drift_app(shift_after=2, impact=True)) as url, \
            RegistryClient(url, retries=0) as client:
        shifted = client.fleet_drift("digits")
    assert shifted is not None and shifted.impact is not None and shifted.version == 3
    assert shifted.impact_triggered and shifted.signals == ["impact"] and shifted.score == 1.0
    with serve(drift_app(shift_after=None, impact=True)) as url, \
            RegistryClient(url, retries=0) as client:
        calm = client.fleet_drift("digits")
    assert calm is not None and calm.impact is not None and not calm.triggered


def test_controller_starts_one_run_on_the_servers_drift() -> None:
    launched: list[str] = []
    with serve(drift_app(shift_after=1)) as url, RegistryClient(url, retries=0) as client:
        def launch(model: str, reason: str) -> str:
            launched.append(reason)
            return "run-1"

        ctl = DriftController("digits", client, launch, ControllerPolicy(schedule_every=None),
                              sleep=lambda s: None)
        decisions = ctl.run(max_iterations=3, interval_s=0)
    assert [d.start for d in decisions] == [True, False, False]
    assert launched == ["drift"]

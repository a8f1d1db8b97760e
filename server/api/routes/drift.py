"""Fleet drift of a model version, from the drift summaries devices reported (admin).

``GET /api/v1/models/{m}/versions/{v}/drift``           the fleet's verdict per time window,
                                                        with threshold crossings (events)
``GET /api/v1/models/{m}/versions/{v}/drift/summary``   everything in the range merged: one
                                                        full report (per-feature statistics)
``GET /api/v1/models/{m}/versions/{v}/drift/devices``   each device over the range
``GET /api/v1/models/{m}/versions/{v}/drift/features``  per-feature statistics per window

``since``/``until`` select the telemetry windows overlapping that range; ``bucket_minutes``
sizes the time windows. The statistics are :mod:`server.drift`'s pure functions, fed from
:func:`registry.telemetry.drift_rows` and the version's reference profile; thresholds come from
the ``drift_thresholds`` setting. Summaries that cannot be merged are listed as ``rejected``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import Session

from edgefleet.drift import DriftSummary, ReferenceProfile
from registry.errors import ConflictError
from registry.telemetry import drift_rows
from registry.versions import get_version, reference_of
from server.deps import AdminDep, SessionDep, StateDep
from server.drift import (
    DeviceDriftReport,
    DriftRecord,
    DriftReport,
    FeatureDriftReport,
    FleetDriftReport,
    drift_by_device,
    drift_by_feature,
    fleet_drift,
    fleet_over_time,
)
from server.state import AppState

router = APIRouter(prefix="/models/{model}/versions/{version}/drift", tags=["drift"])

Since = Annotated[datetime | None, Query(description="windows ending at or after (with zone)")]
Until = Annotated[datetime | None, Query(description="windows starting at or before")]
Bucket = Annotated[int, Query(ge=1, le=7 * 24 * 60, description="window length in minutes")]


def _records(
    session: Session,
    model: str,
    version: int,
    since: datetime | None,
    until: datetime | None,
    device: str | None = None,
) -> tuple[list[DriftRecord], ReferenceProfile]:
    reference = reference_of(get_version(session, model, version))
    if reference is None:
        raise ConflictError(f"version {version} of {model!r} has no reference profile")
    rows = drift_rows(session, model, version, device=device, since=since, until=until)
    records = [
        DriftRecord(
            r.device_id,
            r.model,
            r.version,
            r.window_start,
            r.window_end,
            DriftSummary.parse(r.drift),
        )
        for r in rows
    ]
    return records, reference


def _common(state: AppState, model: str, version: int) -> dict[str, Any]:
    return {"model": model, "version": version, "thresholds": state.drift_policy.for_model(model)}


@router.get("", response_model=FleetDriftReport, summary="Fleet drift over time")
def fleet_over_time_route(
    model: str,
    version: int,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    since: Since = None,
    until: Until = None,
    bucket_minutes: Bucket = 60,
) -> FleetDriftReport:
    records, reference = _records(session, model, version, since, until)
    return fleet_over_time(
        records,
        reference,
        bucket=timedelta(minutes=bucket_minutes),
        **_common(state, model, version),
    )


@router.get("/summary", response_model=DriftReport, summary="Fleet drift over the whole range")
def fleet_summary_route(
    model: str,
    version: int,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    since: Since = None,
    until: Until = None,
    device: str | None = None,
) -> DriftReport:
    records, reference = _records(session, model, version, since, until, device)
    return fleet_drift(records, reference, **_common(state, model, version))


@router.get("/devices", response_model=DeviceDriftReport, summary="Drift per device")
def devices_route(
    model: str,
    version: int,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    since: Since = None,
    until: Until = None,
) -> DeviceDriftReport:
    records, reference = _records(session, model, version, since, until)
    return drift_by_device(records, reference, **_common(state, model, version))


@router.get("/features", response_model=FeatureDriftReport, summary="Drift per feature over time")
def features_route(
    model: str,
    version: int,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    since: Since = None,
    until: Until = None,
    bucket_minutes: Bucket = 60,
    feature: Annotated[list[str] | None, Query(description="feature names (repeatable)")] = None,
) -> FeatureDriftReport:
    records, reference = _records(session, model, version, since, until)
    return drift_by_feature(
        records,
        reference,
        bucket=timedelta(minutes=bucket_minutes),
        features=feature,
        **_common(state, model, version),
    )

"""Fleet drift of a model version, from the drift summaries devices reported (admin).

``GET /api/v1/models/{m}/versions/{v}/drift``           the fleet's verdict per time window,
                                                        with threshold crossings (events)
``GET /api/v1/models/{m}/versions/{v}/drift/summary``   everything in the range merged: one
                                                        full report (per-feature statistics)
``GET /api/v1/models/{m}/versions/{v}/drift/devices``   each device over the range
``GET /api/v1/models/{m}/versions/{v}/drift/features``  per-feature statistics per window
``GET /api/v1/models/{m}/versions/{v}/drift/impact``    each device's change against its own
                                                        baseline, weighed by what it costs:
                                                        the retraining trigger's reading

``since``/``until`` select the telemetry windows overlapping that range; ``bucket_minutes``
sizes the time windows. The statistics are :mod:`server.drift`'s pure functions, fed from
:func:`registry.telemetry.drift_rows` and the version's reference profile; thresholds come from
the ``drift_thresholds`` setting, and the performance verdict compares labelled accuracy with
the version's ``accuracy_metric`` metric (its validation accuracy). Summaries that cannot be
merged are listed as ``rejected``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session

from edgefleet.bounds import QueryText, Timestamp
from edgefleet.drift import DriftSummary, ReferenceProfile
from registry.errors import ConflictError, InvalidQueryError
from registry.telemetry import drift_rows
from registry.versions import get_version, reference_of
from server.api.responses import ADMIN_ERRORS, error_responses
from server.deps import (
    AdminDep,
    DeviceQuery,
    ModelPath,
    SessionDep,
    StateDep,
    VersionPath,
)
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
from server.drift.impact import FleetImpactReport, fleet_impact
from server.state import AppState

router = APIRouter(
    prefix="/models/{model}/versions/{version}/drift",
    tags=["drift"],
    responses={**ADMIN_ERRORS, **error_responses(404, 409)},
)

Since = Annotated[Timestamp | None, Query(description="windows ending at or after (with zone)")]
Until = Annotated[Timestamp | None, Query(description="windows starting at or before")]
Bucket = Annotated[int, Query(ge=1, le=7 * 24 * 60, description="window length in minutes")]


@dataclass(frozen=True)
class DriftScope:
    """What every drift route asks for: a model version and a time range (admin only)."""

    session: Session
    state: AppState
    model: str
    version: int
    since: datetime | None
    until: datetime | None

    def records(self, device: str | None = None) -> tuple[list[DriftRecord], ReferenceProfile]:
        """The stored drift summaries in range (of ``device``), and the version's reference."""
        reference = reference_of(get_version(self.session, self.model, self.version))
        if reference is None:
            raise ConflictError(
                f"version {self.version} of {self.model!r} has no reference profile"
            )
        rows = drift_rows(
            self.session,
            self.model,
            self.version,
            device=device,
            since=self.since,
            until=self.until,
        )
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

    def common(self) -> dict[str, Any]:
        """The keyword arguments every :mod:`server.drift` report takes."""
        thresholds = self.state.drift_policy.for_model(self.model)
        metrics = get_version(self.session, self.model, self.version).metrics or {}
        accuracy = metrics.get(thresholds.accuracy_metric)
        return {
            "model": self.model,
            "version": self.version,
            "thresholds": thresholds,
            "validation_accuracy": float(accuracy) if isinstance(accuracy, int | float) else None,
        }


async def drift_scope(
    model: ModelPath,
    version: VersionPath,
    _: AdminDep,
    session: SessionDep,
    state: StateDep,
    since: Since = None,
    until: Until = None,
) -> DriftScope:
    """The :class:`DriftScope` of a request (no I/O: runs on the event loop)."""
    return DriftScope(session, state, model, version, since, until)


ScopeDep = Annotated[DriftScope, Depends(drift_scope)]


@router.get("", response_model=FleetDriftReport, summary="Fleet drift over time")
def fleet_over_time_route(scope: ScopeDep, bucket_minutes: Bucket = 60) -> FleetDriftReport:
    records, reference = scope.records()
    return fleet_over_time(
        records, reference, bucket=timedelta(minutes=bucket_minutes), **scope.common()
    )


@router.get("/summary", response_model=DriftReport, summary="Fleet drift over the whole range")
def fleet_summary_route(scope: ScopeDep, device: DeviceQuery = None) -> DriftReport:
    records, reference = scope.records(device)
    return fleet_drift(records, reference, **scope.common())


@router.get("/devices", response_model=DeviceDriftReport, summary="Drift per device")
def devices_route(scope: ScopeDep) -> DeviceDriftReport:
    records, reference = scope.records()
    return drift_by_device(records, reference, **scope.common())


@router.get("/impact", response_model=FleetImpactReport, summary="Fleet drift weighed by impact")
def impact_route(scope: ScopeDep) -> FleetImpactReport:
    records, reference = scope.records()
    return fleet_impact(records, reference, model=scope.model, version=scope.version)


@router.get("/features", response_model=FeatureDriftReport, summary="Drift per feature over time")
def features_route(
    scope: ScopeDep,
    bucket_minutes: Bucket = 60,
    feature: Annotated[
        list[QueryText] | None, Query(description="feature names (repeatable)")
    ] = None,
) -> FeatureDriftReport:
    records, reference = scope.records()
    unknown = sorted(set(feature or ()) - set(reference.feature_names))
    if unknown:
        names = len(reference.feature_names)
        raise InvalidQueryError(f"unknown features {unknown[:5]} (the reference has {names})")
    return drift_by_feature(
        records,
        reference,
        bucket=timedelta(minutes=bucket_minutes),
        features=feature,
        **scope.common(),
    )

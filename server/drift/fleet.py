"""Fleet drift: merge device summaries by device, model version and time window, and report.

Every function is pure: it takes the stored telemetry as :class:`DriftRecord` s (any iterable of
``(device_id, model, version, window_start, window_end, summary)`` tuples) and the model
version's :class:`~edgefleet.drift.ReferenceProfile` (``manifest.reference``), and returns a
pydantic report. Records of other models or versions are ignored; records that cannot be merged
(summary of another model/version than the record says, bins of another reference, a window
that ends before it starts) are left out and listed in the report's ``rejected``, so one bad
device never hides the fleet — and never alters what the others merged to.

Time windows: a record belongs to the bucket ``[origin + i·bucket, origin + (i+1)·bucket)``
that contains its ``window_start`` (naive datetimes are taken as UTC).

How a route uses it (``server/api/routes/drift.py`` mounts these)::

    @router.get("/models/{m}/versions/{v}/drift", response_model=FleetDriftReport)
    def fleet(m: str, v: int, session: SessionDep, hours: int = 1, since: datetime | None = None):
        reference = load_manifest(session, m, v).reference          # 404 when missing
        rows = session.exec(select(Telemetry.device_id, Telemetry.model, Telemetry.version,
                                   Telemetry.window_start, Telemetry.window_end,
                                   Telemetry.drift)
                            .where(... since ...)).all()
        records = [DriftRecord(*r[:5], DriftSummary.parse(r[5])) for r in rows if r[5]]
        return fleet_over_time(records, reference, model=m, version=v,
                               bucket=timedelta(hours=hours), thresholds=policy.for_model(m))

``drift_by_device`` and ``drift_by_feature`` are called the same way; ``fleet_drift`` gives the
full :class:`~server.drift.DriftReport` of everything passed. The intake route should call
``summary.check_reference(reference)`` (→ :class:`~edgefleet.errors.SummaryError`, HTTP 422)
before storing a report, and may call :func:`server.drift.step` per closed window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from edgefleet.drift import DriftSummary, ReferenceProfile
from edgefleet.errors import SummaryError
from server.drift.base import FeatureStatus, ReportModel, Verdict
from server.drift.events import DriftEvent, MonitorState, WindowDrift, detect_crossings
from server.drift.report import DriftReport, compute_drift
from server.drift.thresholds import DriftThresholds
from server.drift.verdicts import DriftVerdicts

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DriftRecord(NamedTuple):
    """One device's summary for one telemetry window."""

    device_id: str
    model: str
    version: int
    window_start: datetime
    window_end: datetime
    summary: DriftSummary


class RejectedRecord(ReportModel):
    device_id: str
    window_start: datetime
    window_end: datetime
    reason: str


class FleetDriftReport(ReportModel):
    """Fleet drift over time: one entry per non-empty window, and the crossings among them."""

    model: str
    version: int
    bucket_seconds: float
    windows: list[WindowDrift]
    events: list[DriftEvent]
    state: MonitorState
    rejected: list[RejectedRecord]


class DeviceDrift(ReportModel):
    """One device's summaries over the whole period, merged.

    ``joint_effect`` is the combined test's joint bias-corrected effect (PSI scale, all features
    together; ``None`` when the combined test did not run): the size of the device's shift.
    """

    device_id: str
    n_reports: int
    first_window_start: datetime
    last_window_end: datetime
    n_samples: int
    verdict: Verdict
    share_drifted: float
    max_psi: float | None
    drifted_features: list[str]
    joint_effect: float | None
    verdicts: DriftVerdicts


class DeviceDriftReport(ReportModel):
    model: str
    version: int
    devices: list[DeviceDrift]
    rejected: list[RejectedRecord]


class FeaturePoint(ReportModel):
    window_start: datetime
    window_end: datetime
    n: int
    status: FeatureStatus
    psi: float | None
    psi_corrected: float | None
    ks_pvalue: float | None
    js_distance: float | None
    wasserstein_std: float | None
    mean_shift_std: float | None


class FeatureSeries(ReportModel):
    index: int
    name: str
    points: list[FeaturePoint]


class FeatureDriftReport(ReportModel):
    """Per-feature drift statistics over time (the fleet merged per window)."""

    model: str
    version: int
    bucket_seconds: float
    features: list[FeatureSeries]
    rejected: list[RejectedRecord]


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _problem(r: DriftRecord, reference: ReferenceProfile) -> str | None:
    if (r.summary.model, r.summary.version) != (r.model, r.version):
        return (
            f"summary is for {r.summary.model!r} v{r.summary.version}, record says "
            f"{r.model!r} v{r.version}"
        )
    if _utc(r.window_end) < _utc(r.window_start):
        return "window ends before it starts"
    try:
        r.summary.check_reference(reference)
    except SummaryError as exc:
        return str(exc)
    return None


def _select(
    records: Iterable[DriftRecord], reference: ReferenceProfile, model: str, version: int
) -> tuple[list[DriftRecord], list[RejectedRecord]]:
    good: list[DriftRecord] = []
    rejected: list[RejectedRecord] = []
    for r in records:
        rec = DriftRecord(*r)
        if (rec.model, rec.version) != (model, version):
            continue
        problem = _problem(rec, reference)
        if problem is None:
            good.append(rec)
        else:
            rejected.append(RejectedRecord.project(rec, reason=problem))
    return good, rejected


def merge_records(
    records: Iterable[DriftRecord], reference: ReferenceProfile, *, model: str, version: int
) -> tuple[DriftSummary, list[RejectedRecord]]:
    """All usable summaries of ``model`` v``version`` merged (an empty summary when none)."""
    good, rejected = _select(records, reference, model, version)
    merged = DriftSummary.merge_all(
        [DriftSummary.empty(reference, model=model, version=version), *(r.summary for r in good)]
    )
    return merged, rejected


def fleet_drift(
    records: Iterable[DriftRecord],
    reference: ReferenceProfile,
    *,
    model: str,
    version: int,
    thresholds: DriftThresholds | None = None,
    validation_accuracy: float | None = None,
) -> DriftReport:
    """The full drift report of every usable record passed, merged into one window."""
    merged, _ = merge_records(records, reference, model=model, version=version)
    return compute_drift(merged, reference, thresholds, validation_accuracy=validation_accuracy)


def _by_window(
    good: Sequence[DriftRecord], bucket: timedelta, origin: datetime
) -> list[tuple[datetime, datetime, list[DriftRecord]]]:
    if bucket <= timedelta(0):
        raise ValueError("bucket must be a positive duration")
    groups: dict[int, list[DriftRecord]] = defaultdict(list)
    org = _utc(origin)
    for r in good:
        groups[(_utc(r.window_start) - org) // bucket].append(r)
    return [(org + i * bucket, org + (i + 1) * bucket, groups[i]) for i in sorted(groups)]


def _window_reports(
    records: Iterable[DriftRecord],
    reference: ReferenceProfile,
    model: str,
    version: int,
    bucket: timedelta,
    thresholds: DriftThresholds,
    origin: datetime,
    validation_accuracy: float | None = None,
) -> tuple[list[tuple[datetime, datetime, list[DriftRecord], DriftReport]], list[RejectedRecord]]:
    good, rejected = _select(records, reference, model, version)
    out = []
    for start, end, group in _by_window(good, bucket, origin):
        merged = DriftSummary.merge_all(r.summary for r in group)
        rep = compute_drift(merged, reference, thresholds, validation_accuracy=validation_accuracy)
        out.append((start, end, group, rep))
    return out, rejected


def fleet_over_time(
    records: Iterable[DriftRecord],
    reference: ReferenceProfile,
    *,
    model: str,
    version: int,
    bucket: timedelta = timedelta(hours=1),
    thresholds: DriftThresholds | None = None,
    origin: datetime = EPOCH,
    state: MonitorState | None = None,
    validation_accuracy: float | None = None,
) -> FleetDriftReport:
    """The fleet's verdicts per time window, and the threshold crossings (from ``state``)."""
    th = thresholds or DriftThresholds()
    reports, rejected = _window_reports(
        records, reference, model, version, bucket, th, origin, validation_accuracy
    )
    windows = [
        WindowDrift.project(
            rep,
            window_start=s,
            window_end=e,
            n_devices=len({r.device_id for r in g}),
            n_reports=len(g),
        )
        for s, e, g, rep in reports
    ]
    events, final = detect_crossings(windows, th, model=model, version=version, state=state)
    return FleetDriftReport(
        model=model,
        version=version,
        bucket_seconds=bucket.total_seconds(),
        windows=windows,
        events=events,
        state=final,
        rejected=rejected,
    )


def drift_by_device(
    records: Iterable[DriftRecord],
    reference: ReferenceProfile,
    *,
    model: str,
    version: int,
    thresholds: DriftThresholds | None = None,
    validation_accuracy: float | None = None,
) -> DeviceDriftReport:
    """Each device's records merged over the whole period, with its verdicts."""
    good, rejected = _select(records, reference, model, version)
    per: dict[str, list[DriftRecord]] = defaultdict(list)
    for r in good:
        per[r.device_id].append(r)
    devices = []
    for device_id in sorted(per):
        group = per[device_id]
        merged = DriftSummary.merge_all(r.summary for r in group)
        rep = compute_drift(merged, reference, thresholds, validation_accuracy=validation_accuracy)
        devices.append(
            DeviceDrift.project(
                rep,
                device_id=device_id,
                n_reports=len(group),
                first_window_start=min(_utc(r.window_start) for r in group),
                last_window_end=max(_utc(r.window_end) for r in group),
                joint_effect=rep.combined.effect if rep.combined is not None else None,
            )
        )
    return DeviceDriftReport(model=model, version=version, devices=devices, rejected=rejected)


def drift_by_feature(
    records: Iterable[DriftRecord],
    reference: ReferenceProfile,
    *,
    model: str,
    version: int,
    bucket: timedelta = timedelta(hours=1),
    thresholds: DriftThresholds | None = None,
    features: Sequence[str] | None = None,
    origin: datetime = EPOCH,
    validation_accuracy: float | None = None,
) -> FeatureDriftReport:
    """Per-feature statistics per time window (``features``: names to keep, default all)."""
    names = reference.feature_names
    if features is not None:
        unknown = sorted(set(features) - set(names))
        if unknown:
            raise ValueError(f"unknown features: {unknown}")
    keep = [j for j, nm in enumerate(names) if features is None or nm in set(features)]
    th = thresholds or DriftThresholds()
    reports, rejected = _window_reports(
        records, reference, model, version, bucket, th, origin, validation_accuracy
    )
    series = []
    for j in keep:
        points = [
            FeaturePoint.project(rep.features[j], window_start=s, window_end=e)
            for s, e, _, rep in reports
        ]
        series.append(FeatureSeries(index=j, name=names[j], points=points))
    return FeatureDriftReport(
        model=model,
        version=version,
        bucket_seconds=bucket.total_seconds(),
        features=series,
        rejected=rejected,
    )

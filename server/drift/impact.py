"""Fleet drift as change, weighed by what it costs: the retraining trigger's report.

:func:`fleet_impact` takes the stored telemetry of one model version (:class:`DriftRecord` s,
each device's summary per window, as :mod:`server.drift.fleet` takes them) and replays every
device's windows in time order through :class:`edgefleet.drift.baseline.Baselines`: the
device's first windows on the version are its baseline, its newest ones what it sees now. Each
device's change (against its own baseline: standing non-IID-ness is not drift), difference
(against the version's reference) and labelled-accuracy drop are weighed by
:func:`edgefleet.drift.impact.fleet_impact` into one number and a trigger decision.

Because baselines are per version, a fleet that moved to a version trained on its new data is
healthy on it (its baselines start afresh), and a controller reading this report re-arms.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgefleet.drift import ReferenceProfile
from edgefleet.drift.baseline import TELEMETRY_BASELINE, BaselineConfig, Baselines
from edgefleet.drift.impact import ImpactConfig
from edgefleet.drift.impact import fleet_impact as weigh
from server.drift.base import ReportModel
from server.drift.fleet import DriftRecord, RejectedRecord, _select, _utc


class DeviceChange(ReportModel):
    """One device's reading."""

    device_id: str
    rows: int
    change: float | None
    difference: float
    accuracy_drop: float | None
    labels: int


class FleetImpactReport(ReportModel):
    """The fleet's drift weighed by impact (``edgefleet.drift.impact``)."""

    model: str
    version: int
    devices: int
    changed: int
    affected: int
    share_affected: float
    severity: float
    accuracy_drop: float | None
    mean_change: float | None
    impact: float
    min_impact: float
    triggered: bool
    per_device: list[DeviceChange]
    rejected: list[RejectedRecord]


def fleet_impact(
    records: Iterable[DriftRecord],
    reference: ReferenceProfile,
    *,
    model: str,
    version: int,
    baseline: BaselineConfig | None = None,
    impact: ImpactConfig | None = None,
) -> FleetImpactReport:
    """Replay each device's windows of ``model`` v``version`` and weigh the fleet's change."""
    cfg = baseline or TELEMETRY_BASELINE
    weights = impact or ImpactConfig()
    good, rejected = _select(records, reference, model, version)
    tracker = Baselines(reference, cfg)
    for r in sorted(good, key=lambda r: (_utc(r.window_start), r.device_id)):
        tracker.observe(r.device_id, r.summary)
    readings = dict(sorted(tracker.readings.items()))
    fleet = weigh(readings, weights)
    per_device = [
        DeviceChange(device_id=d, rows=r.rows, change=r.change, difference=r.difference,
                     accuracy_drop=r.accuracy_drop, labels=r.recent_labels)
        for d, r in readings.items()
    ]
    return FleetImpactReport(
        model=model, version=version, devices=fleet.devices, changed=fleet.changed,
        affected=fleet.affected, share_affected=fleet.share_affected, severity=fleet.severity,
        accuracy_drop=fleet.accuracy_drop, mean_change=fleet.mean_change, impact=fleet.impact,
        min_impact=weights.min_impact, triggered=fleet.triggered, per_device=per_device,
        rejected=rejected,
    )

"""Drift tests on the server: statistics, verdicts and fleet reports from device drift summaries.

Modules
    ``stats``       pure, vectorised two-sample statistics on binned counts (PSI, KS, JS, W1, χ²).
    ``thresholds``  :class:`DriftThresholds` (defaults and the decision rule) and per-model
                    :class:`ThresholdPolicy`.
    ``report``      :func:`compute_drift`: one merged summary against the reference → a
                    :class:`DriftReport` (per-feature statistics, verdict, prediction test).
    ``fleet``       merging by device, model version and time window; fleet-over-time,
                    per-device and per-feature reports.
    ``events``      threshold crossings with hysteresis (:class:`DriftEvent`).

Everything here is a pure function of its inputs (no database, no HTTP): the telemetry routes
load :class:`~edgefleet.drift.DriftSummary` records and the model version's reference profile,
call these functions and return their pydantic reports. Errors are
:class:`edgefleet.errors.SummaryError` (a summary that does not fit its reference).
May import scipy; nothing on the device imports this package.
"""

from server.drift.events import DriftEvent, MonitorState, WindowDrift, detect_crossings, step
from server.drift.fleet import (
    DeviceDrift,
    DeviceDriftReport,
    DriftRecord,
    FeatureDriftReport,
    FeaturePoint,
    FeatureSeries,
    FleetDriftReport,
    RejectedRecord,
    drift_by_device,
    drift_by_feature,
    fleet_drift,
    fleet_over_time,
    merge_records,
)
from server.drift.report import DriftReport, FeatureDrift, PredictionDrift, compute_drift
from server.drift.thresholds import DriftThresholds, ThresholdPolicy

__all__ = [
    "DeviceDrift",
    "DeviceDriftReport",
    "DriftEvent",
    "DriftRecord",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "FeatureDriftReport",
    "FeaturePoint",
    "FeatureSeries",
    "FleetDriftReport",
    "MonitorState",
    "PredictionDrift",
    "RejectedRecord",
    "ThresholdPolicy",
    "WindowDrift",
    "compute_drift",
    "detect_crossings",
    "drift_by_device",
    "drift_by_feature",
    "fleet_drift",
    "fleet_over_time",
    "merge_records",
    "step",
]

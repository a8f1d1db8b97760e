"""Drift tests on the server: statistics, verdicts and fleet reports from device drift summaries.

Modules
    ``stats``       pure, vectorised two-sample statistics on binned counts (PSI and its
                    bias-corrected form, KS with exact p-values, JS, W1, χ²).
    ``thresholds``  :class:`DriftThresholds` (defaults and the decision rule) and per-model
                    :class:`ThresholdPolicy`.
    ``combined``    the fleet-level combined test over all features (correlation accounted for).
    ``labels``      prediction histogram, performance drift, label-prior shift.
    ``verdicts``    :class:`DriftVerdicts`: the three verdicts every consumer reads.
    ``features``    per-feature statistics of one merged summary against the reference, vectorised
                    over the features → one :class:`FeatureDrift` a feature.
    ``report``      :func:`compute_drift`: one merged summary against the reference → a
                    :class:`DriftReport` (per-feature tests, combined test, verdicts).
    ``fleet``       merging by device, model version and time window; fleet-over-time,
                    per-device and per-feature reports.
    ``events``      threshold crossings with hysteresis (:class:`DriftEvent`).

Everything here is a pure function of its inputs (no database, no HTTP): the telemetry routes
load :class:`~edgefleet.drift.DriftSummary` records and the model version's reference profile,
call these functions and return their pydantic reports. Errors are
:class:`edgefleet.errors.SummaryError` (a summary that does not fit its reference).
May import scipy; nothing on the device imports this package.
"""

from server.drift.base import Verdict
from server.drift.combined import CombinedDrift, FeatureContribution
from server.drift.events import (
    DriftEvent,
    MonitorState,
    TrackState,
    WindowDrift,
    detect_crossings,
    step,
)
from server.drift.features import FeatureDrift
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
from server.drift.labels import LabelPriorDrift, PerformanceDrift, PredictionDrift
from server.drift.report import DriftReport, compute_drift
from server.drift.thresholds import DriftThresholds, ThresholdPolicy
from server.drift.verdicts import SIGNALS, DriftVerdicts, Signal

__all__ = [
    "SIGNALS",
    "CombinedDrift",
    "DeviceDrift",
    "DeviceDriftReport",
    "DriftEvent",
    "DriftRecord",
    "DriftReport",
    "DriftThresholds",
    "DriftVerdicts",
    "FeatureContribution",
    "FeatureDrift",
    "FeatureDriftReport",
    "FeaturePoint",
    "FeatureSeries",
    "FleetDriftReport",
    "LabelPriorDrift",
    "MonitorState",
    "PerformanceDrift",
    "PredictionDrift",
    "RejectedRecord",
    "Signal",
    "ThresholdPolicy",
    "TrackState",
    "Verdict",
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

"""Drift summaries: compact, mergeable statistics of what a device has seen (never raw data).

``scores``       smooth location/spread scores of binned features and the correlation traces
                 that calibrate their sum (the server's combined drift test).
``reference``    the training data's statistics kept in the plan manifest, and its fingerprint.
``summary``      :class:`DriftSummary`, the versioned, bounded wire format, and its associative,
                 commutative merge.
``accumulator``  :class:`DriftAccumulator`, the mutable hot-path form a device updates per batch.
``state``        the numpy form both share, and Chan's merge of means and squared deviations.
``packed``       the summary as one fixed-layout binary vector (Flower replies), decoded and
                 validated for many replies at once.
``compare``      numpy-only PSI of a summary against its reference (shared with the server).
``effect``       an effect size of a shift (bias-corrected RMS standardized moment shift).
``baseline``     a device's recent windows against its own healthy baseline on a version.
``impact``       the fleet's drift weighed by what it costs: the retraining trigger.

Imports run one way: ``scores`` ← ``reference`` ← ``state`` ← ``summary`` ← ``accumulator``,
``summary`` ← ``packed`` ← ``baseline``, and ``compare`` ← ``effect`` ← ``baseline`` ← ``impact``
(the state knows nothing of the wire model).

Imports nothing heavier than numpy and pydantic. Refusals raise
:class:`edgefleet.errors.SummaryError` (summaries) or :class:`edgefleet.errors.InputError` (rows).
"""

from edgefleet.drift.accumulator import DriftAccumulator
from edgefleet.drift.baseline import refreshed_reference
from edgefleet.drift.compare import feature_psi, psi
from edgefleet.drift.reference import (
    FeatureReference,
    ReferenceProfile,
    build_reference,
    prediction_histograms,
    quantile_edges,
    with_predictions,
)
from edgefleet.drift.summary import SCHEMA_VERSION, DriftSummary, fold_counts

__all__ = [
    "SCHEMA_VERSION",
    "DriftAccumulator",
    "DriftSummary",
    "FeatureReference",
    "ReferenceProfile",
    "build_reference",
    "feature_psi",
    "fold_counts",
    "prediction_histograms",
    "psi",
    "quantile_edges",
    "refreshed_reference",
    "with_predictions",
]

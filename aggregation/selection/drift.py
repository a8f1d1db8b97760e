"""Drift-prioritised selection: nodes whose data moved away from the reference are picked more.

A node's *drift score* in ``[0, 1]`` is computed from the :class:`~edgefleet.drift.DriftSummary`
it sent in its query reply, against the plan's :class:`~edgefleet.drift.ReferenceProfile`, with
the numpy-only population stability index the whole code base shares
(:func:`edgefleet.drift.feature_psi`: the reference's own bins, the same smoothing as the
server's drift tests; no scipy on the aggregation path). The score is the share of features
whose PSI is at least ``psi_threshold`` (0.2 is the customary "significant shift"). A feature
without a single finite value has no PSI and does not count as drifted; non-finite inputs are
the server's ``nan_rate`` statistic, not a shift of the distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aggregation.errors import SettingsError
from aggregation.selection.base import Candidate, weighted_sample
from edgefleet.drift import DriftSummary, ReferenceProfile, feature_psi
from edgefleet.drift.compare import DEFAULT_EPSILON
from edgefleet.errors import SummaryError
from edgefleet.run_settings import DEFAULTS

DEFAULT_PSI_THRESHOLD = 0.2


class DriftScorer:
    """Score drift summaries against one reference profile.

    Parameters
    ----------
    reference : ReferenceProfile
        The plan's reference statistics (``manifest.reference``).
    psi_threshold : float (default: 0.2)
        A feature whose PSI is at least this counts as drifted.
    min_rows : int (default: 30)
        Summaries of fewer rows get no score (``None``): too little data to tell.
    epsilon : float (default: 1e-4)
        PSI smoothing of the proportions (see :func:`edgefleet.drift.psi`), so that empty bins
        are finite.
    """

    def __init__(
        self,
        reference: ReferenceProfile,
        psi_threshold: float = DEFAULT_PSI_THRESHOLD,
        min_rows: int = 30,
        epsilon: float = DEFAULT_EPSILON,
    ) -> None:
        if not psi_threshold > 0 or min_rows < 1 or not epsilon > 0:
            raise SettingsError("psi_threshold and epsilon must be > 0, min_rows >= 1")
        self.reference = reference
        self.psi_threshold = psi_threshold
        self.min_rows = min_rows
        self.epsilon = epsilon

    def psi(self, summary: DriftSummary) -> np.ndarray:
        """PSI per feature of ``summary`` against the reference (``nan``: no finite value).

        Raises :class:`~edgefleet.errors.SummaryError` when the summary does not fit it.
        """
        return feature_psi(summary, self.reference, epsilon=self.epsilon)

    def score(self, summary: DriftSummary | None) -> float | None:
        """Share of drifted features in ``[0, 1]``; ``None`` without a usable summary."""
        if summary is None or summary.n < self.min_rows or not self.reference.features:
            return None
        try:
            psi = self.psi(summary)
        except SummaryError:
            return None
        return float(np.mean(np.nan_to_num(psi, nan=0.0) >= self.psi_threshold))


class DriftPrioritisedSelection:
    """Pick nodes with probability increasing with their drift score.

    Node ``i`` is drawn (without replacement) with probability proportional to
    ``floor + score_i ** sharpness``, where ``score_i`` in ``[0, 1]`` is its
    :attr:`Candidate.drift_score`. ``floor > 0`` keeps undrifted nodes in play, so the global
    model does not forget the undrifted part of the fleet.

    Parameters
    ----------
    floor : float (default: 0.1)
        Selection weight of a node with score 0; a fully drifted node weighs ``floor + 1``.
    sharpness : float (default: 1.0)
        Exponent on the score; larger concentrates selection on the most drifted nodes.
    missing_score : float (default: 0.0)
        Score of a candidate without one (no summary, too few rows).
    """

    name = "drift"

    def __init__(self, floor: float = DEFAULTS.drift_floor, sharpness: float = 1.0,
                 missing_score: float = 0.0):
        if not floor > 0 or not sharpness > 0 or not 0 <= missing_score <= 1:
            raise SettingsError("floor and sharpness must be > 0, missing_score in [0, 1]")
        self.floor = floor
        self.sharpness = sharpness
        self.missing_score = missing_score

    def weights(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """The unnormalised selection weight of every candidate."""
        scores = np.asarray(
            [self.missing_score if c.drift_score is None else c.drift_score for c in candidates],
            dtype=np.float64,
        )
        scores = np.clip(np.nan_to_num(scores, nan=self.missing_score), 0.0, 1.0)
        return np.asarray(self.floor + scores**self.sharpness)

    def select(
        self,
        candidates: Sequence[Candidate],
        k: int,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Draw ``min(k, len(candidates))`` distinct nodes weighted by :meth:`weights`."""
        if not candidates:
            return []
        return weighted_sample(candidates, self.weights(candidates), k, rng)

    def __repr__(self) -> str:
        return (
            f"DriftPrioritisedSelection(floor={self.floor}, sharpness={self.sharpness}, "
            f"missing_score={self.missing_score})"
        )

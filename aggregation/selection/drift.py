"""Drift-prioritised selection: a reserved share of every round for the nodes that drifted.

:class:`DriftPrioritisedSelection` picks by each candidate's drift score. The round loop's
scores are the change of each node against its own baseline
(:mod:`aggregation.selection.tracking`); :class:`DriftScorer` below is the plan-reference score
it falls back to without tracking (and what the query reply's score is before re-scoring).

:class:`DriftScorer`'s score in ``[0, 1]`` is computed from the
:class:`~edgefleet.drift.DriftSummary` a node sent in its query reply, against the plan's
:class:`~edgefleet.drift.ReferenceProfile`, with
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
from aggregation.selection.base import Candidate, by_node, check_k, weighted_sample
from edgefleet.drift import DriftSummary, ReferenceProfile, feature_psi
from edgefleet.drift.compare import DEFAULT_EPSILON
from edgefleet.errors import SummaryError
from edgefleet.run_settings import DEFAULTS

DEFAULT_PSI_THRESHOLD = 0.2
DEFAULT_SHARE = 0.7
DEFAULT_THRESHOLD = 0.5


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
    """Reserve part of every round for the drifted nodes; pick the rest uniformly.

    Of the ``n = min(k, len(candidates))`` picks, up to ``round(share * n)`` go to the
    *drifted* candidates (score at least ``threshold``), drawn without replacement with
    probability proportional to ``floor + score ** sharpness``; the remaining picks are drawn
    uniformly from every candidate not picked yet (drifted ones included). Candidates are
    taken in node-id order, so a seed picks the same nodes however the replies arrived.

    Why a reserved share and not weights over everybody: a node's weight decides only how
    often it trains, so weighting everybody by score gives the drifted nodes almost every slot
    once their scores separate (12 drifted nodes at score 1 against 28 at 0 with floor 0.1 take
    83 % of the picks) and the model forgets the rest of the fleet; a share bounds what the clean
    nodes lose (they keep at least ``1 - share`` of the slots) while the drifted nodes train
    ``share / (their fleet share)`` times as often as under uniform selection. With
    ``share=None`` the policy is the plain weighted draw over all candidates.

    Parameters
    ----------
    floor : float (default: 0.1)
        Weight of a score-0 node in the weighted draws; a fully drifted node weighs
        ``floor + 1``.
    sharpness : float (default: 1.0)
        Exponent on the score; larger concentrates the draws on the most drifted nodes.
    missing_score : float (default: 0.0)
        Score of a candidate without one (no summary, too few rows).
    share : float or None (default: 0.5)
        At most this share of the picks is reserved for drifted nodes (see above); ``None``:
        one weighted draw over every candidate.
    threshold : float (default: 0.2)
        Score from which a node counts as drifted for the reserved share.
    """

    name = "drift"

    def __init__(self, floor: float = DEFAULTS.drift_floor, sharpness: float = 1.0,
                 missing_score: float = 0.0, share: float | None = DEFAULT_SHARE,
                 threshold: float = DEFAULT_THRESHOLD):
        if not floor > 0 or not sharpness > 0 or not 0 <= missing_score <= 1:
            raise SettingsError("floor and sharpness must be > 0, missing_score in [0, 1]")
        if share is not None and not 0 <= share <= 1:
            raise SettingsError(f"share must be in [0, 1] or None, got {share}")
        if not 0 < threshold <= 1:
            raise SettingsError(f"threshold must be in (0, 1], got {threshold}")
        self.floor = floor
        self.sharpness = sharpness
        self.missing_score = missing_score
        self.share = share
        self.threshold = threshold

    def scores(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Every candidate's score in ``[0, 1]`` (missing ones as ``missing_score``)."""
        scores = np.asarray(
            [self.missing_score if c.drift_score is None else c.drift_score for c in candidates],
            dtype=np.float64,
        )
        return np.clip(np.nan_to_num(scores, nan=self.missing_score), 0.0, 1.0)

    def weights(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """The unnormalised draw weight of every candidate."""
        return np.asarray(self.floor + self.scores(candidates) ** self.sharpness)

    def select(
        self,
        candidates: Sequence[Candidate],
        k: int,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Draw ``min(k, len(candidates))`` distinct nodes (see the class notes)."""
        n = check_k(candidates, k)
        if n == 0:
            return []
        cands = by_node(candidates)
        if self.share is None:
            return weighted_sample(cands, self.weights(cands), n, rng)
        drifted = [c for c, s in zip(cands, self.scores(cands), strict=True)
                   if s >= self.threshold]
        reserved = min(len(drifted), round(self.share * n))
        picked = weighted_sample(drifted, self.weights(drifted), reserved, rng) if reserved else []
        taken = set(picked)
        rest = [c for c in cands if c.node_id not in taken]
        idx = rng.choice(len(rest), size=n - reserved, replace=False)
        return picked + [rest[int(i)].node_id for i in idx]

    def __repr__(self) -> str:
        return (
            f"DriftPrioritisedSelection(floor={self.floor}, sharpness={self.sharpness}, "
            f"missing_score={self.missing_score}, share={self.share}, "
            f"threshold={self.threshold})"
        )

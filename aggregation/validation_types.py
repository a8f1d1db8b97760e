"""What update validation takes and gives: the bounds an update must respect, the verdict on it.

:class:`ValidationBounds` holds the bounds :class:`aggregation.validation.UpdateValidator`
applies (the steps are listed in :mod:`aggregation.validation`); a :class:`Verdict` is its
outcome for one node's update, with every :class:`Refusal` found and the decoded weights of an
update that decoded. :class:`aggregation.report.RoundReport` counts refusals per
:class:`RefusalReason`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from flwr.app import MetricRecord

from edgefleet import flower_keys as fk
from edgefleet.run_settings import DEFAULTS


class RefusalReason(StrEnum):
    """Why an update was refused (one update may have several)."""

    MALFORMED = "malformed"
    NAMES = "names"
    SHAPE = "shape"
    DTYPE = "dtype"
    NOT_FINITE = "not-finite"
    NORM = "norm"
    DIRECTION = "direction"
    NUM_EXAMPLES = fk.NUM_EXAMPLES


@dataclass(frozen=True)
class Refusal:
    """One reason to refuse an update, with a human-readable detail."""

    reason: RefusalReason
    detail: str


@dataclass
class Verdict:
    """The outcome of validating one node's update.

    Attributes
    ----------
    node_id : int
        The node that sent the update.
    refusals : list[Refusal]
        Every reason found; empty when the update is accepted.
    num_examples : int or None
        The validated number of examples (``None`` when missing or implausible).
    update_norm : float or None
        ``||w_client - w_global||_2`` (``None`` when it could not be computed).
    arrays : dict[str, np.ndarray]
        The decoded weights (read-only views of the reply's bytes in the usual case, see
        :func:`aggregation.update_arrays.decode_array`) when every array decoded and is
        finite; empty otherwise. :mod:`aggregation.linear` aggregates from them.
    metrics : list[MetricRecord]
        The reply's metric records (one, when it is well formed).
    """

    node_id: int
    refusals: list[Refusal] = field(default_factory=list)
    num_examples: int | None = None
    update_norm: float | None = None
    claimed_examples: int | None = None
    cosine: float | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    metrics: list[MetricRecord] = field(default_factory=list, repr=False)

    @property
    def accepted(self) -> bool:
        return not self.refusals

    @property
    def reasons(self) -> list[RefusalReason]:
        return sorted({r.reason for r in self.refusals})

    def refuse(self, reason: RefusalReason, detail: str) -> None:
        self.refusals.append(Refusal(reason, detail))


@dataclass(frozen=True)
class ValidationBounds:
    """Bounds an update must respect.

    Parameters
    ----------
    max_update_norm : float or None (default: None)
        Absolute bound on ``||w_client - w_global||_2``; ``None`` disables it.
    max_norm_ratio : float or None (default: 10.0)
        Relative bound: an update whose norm exceeds ``max_norm_ratio`` times the median norm of
        the round's otherwise-valid updates is refused; ``None`` disables it.
    min_updates_for_median : int (default: 3)
        The relative bound is applied only with at least this many otherwise-valid updates.
    max_num_examples : int (default: 1_000_000)
        The largest ``num-examples`` any node may report.
    declared_slack : float (default: 0.25)
        A train reply may report up to ``ceil(declared * (1 + declared_slack))`` examples, where
        ``declared`` is the count of the node's query reply.
    min_cosine : float or None (default: 0.1)
        Direction bound: the least cosine between an update and the round's coordinate-wise
        median update; ``None`` disables it.
    max_weight_ratio : float or None (default: 2.0)
        An accepted update weighs at most this many times the round's median ``num-examples``;
        ``None`` disables the cap.
    implausible_ratio : float or None (default: 100.0)
        A ``num-examples`` above this many times the round's median is refused; ``None``
        disables it.
    direction_sample : int (default: 65536)
        Coordinates (evenly spaced over all weights) the direction bound looks at.
    direction_mads : float or None (default: 3.0)
        The direction bound is lowered to the round's median cosine minus this many robust
        deviations (1.4826 x MAD) when that is below ``min_cosine``; ``None``: ``min_cosine``
        alone.
    """

    max_update_norm: float | None = None
    max_norm_ratio: float | None = DEFAULTS.max_norm_ratio
    min_updates_for_median: int = 3
    max_num_examples: int = DEFAULTS.max_num_examples
    declared_slack: float = 0.25
    min_cosine: float | None = DEFAULTS.min_cosine
    max_weight_ratio: float | None = DEFAULTS.max_weight_ratio
    implausible_ratio: float | None = 100.0
    direction_sample: int = 65536
    direction_mads: float | None = DEFAULTS.direction_mads

    def __post_init__(self) -> None:
        from aggregation.errors import SettingsError

        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise SettingsError(f"max_update_norm must be > 0, got {self.max_update_norm}")
        if self.max_norm_ratio is not None and not self.max_norm_ratio >= 1:
            raise SettingsError(f"max_norm_ratio must be >= 1, got {self.max_norm_ratio}")
        if self.min_updates_for_median < 2:
            raise SettingsError("min_updates_for_median must be >= 2")
        if self.max_num_examples < 1:
            raise SettingsError("max_num_examples must be >= 1")
        if not self.declared_slack >= 0:
            raise SettingsError("declared_slack must be >= 0")
        if self.min_cosine is not None and not -1 <= self.min_cosine < 1:
            raise SettingsError(f"min_cosine must be in [-1, 1), got {self.min_cosine}")
        for name in ("max_weight_ratio", "implausible_ratio"):
            value = getattr(self, name)
            if value is not None and not value >= 1:
                raise SettingsError(f"{name} must be >= 1, got {value}")
        if self.direction_sample < 1:
            raise SettingsError("direction_sample must be >= 1")
        if self.direction_mads is not None and not self.direction_mads >= 0:
            raise SettingsError(f"direction_mads must be >= 0, got {self.direction_mads}")


"""Flower's strategies, selected by name and used for their aggregation maths only.

We do not call ``Strategy.start()`` (which waits for every reply and samples nodes itself);
:class:`aggregation.rounds.RoundRunner` runs the round and hands the *validated* replies to the
strategy's ``aggregate_train``. Every strategy is built with
``weighted_by_key="agg-weight"`` (see :mod:`aggregation.steering`).

Names: ``fedavg``, ``fedprox``, ``fedadam``, ``fedyogi``, ``fedtrimmedavg``, ``fedmedian``,
``krum``, ``multikrum``, ``bulyan``, ``bulyan-stacked``. Strategy parameters (``proximal_mu``,
``eta``, ``eta_l``, ``beta_1``, ``beta_2``, ``tau``, ``beta``, ``num_malicious_nodes``,
``num_nodes_to_select``, ``selection_rule``) are passed by keyword and checked against the
class. The robust ones (trimmed mean, median, Krum, MultiKrum, Bulyan) aggregate after
validation, which has already refused what it can name (:mod:`aggregation.validation`); Bulyan
needs at least ``4 * num_malicious_nodes + 3`` accepted updates. ``bulyan-stacked`` is Flower's
Bulyan rule with each reply decoded once (:mod:`aggregation.robust_bulyan`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.exception import AggregationError, InconsistentMessageReplies
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.serverapp.strategy.fedopt import FedOpt
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from aggregation.errors import RoundFailed, SettingsError
from aggregation.robust_bulyan import StackedBulyan
from edgefleet import flower_keys as fk
from edgefleet.plan import WeightSpec

STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedtrimmedavg": FedTrimmedAvg,
    "fedmedian": FedMedian,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "bulyan-stacked": StackedBulyan,
}
_FIXED = {
    "weighted_by_key", "arrayrecord_key", "configrecord_key", "train_metrics_aggr_fn",
    "evaluate_metrics_aggr_fn", "fraction_train", "fraction_evaluate", "min_train_nodes",
    "min_evaluate_nodes", "min_available_nodes",
}


def build_strategy(name: str, params: Mapping[str, Any] | None = None) -> FedAvg:
    """Build the Flower strategy called ``name`` with its own ``params``.

    Parameters
    ----------
    name : str
        One of :data:`STRATEGIES` (case-insensitive).
    params : Mapping[str, Any] or None (default: None)
        Strategy-specific keyword arguments, e.g. ``{"proximal_mu": 0.1}`` for FedProx.

    Raises
    ------
    SettingsError
        Unknown name, unknown parameter, or a parameter Flower refuses.
    """
    cls = STRATEGIES.get(name.lower())
    if cls is None:
        raise SettingsError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    params = dict(params or {})
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"} - _FIXED
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise SettingsError(f"{cls.__name__} takes no {unknown}; it takes {sorted(allowed)}")
    try:
        return cls(
            weighted_by_key=fk.AGG_WEIGHT,
            arrayrecord_key=fk.ARRAYS,
            configrecord_key=fk.CONFIG,
            train_metrics_aggr_fn=aggregate_train_metrics,
            **params,
        )
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{cls.__name__}({params}): {exc}") from exc


def strategy_name(strategy: Strategy) -> str:
    """The registry name of a strategy instance (``"fedavg"``...), or its class name."""
    for name, cls in STRATEGIES.items():
        if type(strategy) is cls:
            return name
    return type(strategy).__name__.lower()


def strategy_train_config(strategy: Strategy) -> dict[str, float]:
    """What the strategy's own ``configure_train`` would add to the train config."""
    if isinstance(strategy, FedProx):
        return {fk.PROXIMAL_MU: float(strategy.proximal_mu)}
    return {}


def aggregate_train_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower's weighted metric average, but ``num-examples`` is the round's total."""
    metrics = aggregate_metricrecords(records, weighting_key)
    total = 0
    for record in records:
        value = next(iter(record.metric_records.values())).get(fk.NUM_EXAMPLES, 0)
        total += int(value) if isinstance(value, int | float) else 0
    metrics[fk.NUM_EXAMPLES] = total
    return metrics


def aggregate(
    strategy: Strategy,
    server_round: int,
    global_weights: Mapping[str, np.ndarray],
    replies: Sequence[Message],
    spec: Sequence[WeightSpec],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Run ``strategy.aggregate_train`` on validated replies; return new weights and metrics.

    The replies' contents come from :func:`aggregation.steering.strategy_contents` (the round
    loop replaces each accepted reply's content with it; a reply keeps its metadata). Adaptive
    strategies (FedAdam, FedYogi) get the current global weights as their ``current_arrays``
    first, which is what their ``configure_train`` would have recorded. The result is cast to
    the spec's dtypes.

    Raises
    ------
    RoundFailed
        The strategy refused the replies, returned nothing, or produced non-finite weights.
    """
    if not replies:
        raise RoundFailed(server_round, "nothing to aggregate")
    if isinstance(strategy, FedOpt):
        strategy.current_arrays = {k: np.asarray(v) for k, v in global_weights.items()}
    try:
        arrays, metrics = strategy.aggregate_train(server_round, list(replies))
    except (AggregationError, InconsistentMessageReplies, ValueError) as exc:
        raise RoundFailed(server_round, f"{type(strategy).__name__}: {exc}") from exc
    if arrays is None:
        raise RoundFailed(server_round, f"{type(strategy).__name__} returned no arrays")
    new: dict[str, np.ndarray] = {}
    for w in spec:
        if w.name not in arrays:
            raise RoundFailed(server_round, f"aggregate lacks weight {w.name!r}")
        arr = np.asarray(arrays[w.name].numpy()).astype(np.dtype(w.dtype), copy=False)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise RoundFailed(server_round, f"aggregate has non-finite values in {w.name!r}")
        new[w.name] = arr.reshape(w.shape)
    flat = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}
    return new, flat

"""FedAvg's weighted mean, on the arrays the validator has already decoded.

Flower's ``FedAvg.aggregate_train`` (and FedProx's, which is the same) decodes every array of
every reply again (``Array.numpy()``, an ``np.load`` per array) and the round loop first rebuilds
each reply's records for it; on small models that is most of a round's server time. For exactly
these two strategies the round loop calls :func:`weighted_mean` instead, with the same
arithmetic in the same order as Flower's ``aggregate_arrayrecords`` and
``aggregate_metricrecords`` (each array times ``w_i / sum(w)``, accumulated in the array's dtype,
replies in order), so the result is the same to the last bit (``tests/aggregation`` checks it),
but over the replies stacked per weight (one multiply and one sum per block of coordinates, not
two numpy calls per reply and weight).
Every other strategy (FedAdam, FedYogi, the robust ones) still gets Flower's
``aggregate_train``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from aggregation.update_arrays import blocks
from edgefleet import flower_keys as fk
from edgefleet.plan import WeightSpec


def applies(strategy: Strategy) -> bool:
    """Whether ``strategy`` aggregates by the plain weighted mean (FedAvg, FedProx)."""
    return type(strategy) in (FedAvg, FedProx)


def weighted_mean(
    arrays: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
    metrics: Sequence[Mapping[str, object]], spec: Sequence[WeightSpec],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """New global weights and train metrics, as Flower's FedAvg computes them.

    ``metrics`` are the replies' ``MetricRecord`` items; the scalar keys every reply reported
    (``num-examples`` aside) are averaged with the same factors, and ``num-examples`` is the
    round's total (as :func:`aggregation.strategies.aggregate_train_metrics`).
    """
    total = sum(weights)
    factors = [w / total for w in weights]
    out: dict[str, np.ndarray] = {}
    for w in spec:
        flats = [a[w.name].reshape(-1) for a in arrays]
        dtype = np.result_type(flats[0].dtype, 1.0)  # a Python float's product, as Flower's
        f = np.asarray(factors, dtype=dtype)[:, None]
        acc = np.empty(flats[0].size, dtype=dtype)
        for lo, hi, block in blocks(flats):
            products = np.multiply(block, f, out=block if block.dtype == dtype else None,
                                   dtype=dtype)
            # row by row in reply order: the sum over axis 0 of a C-ordered block of two or
            # more columns is sequential, so this is Flower's ``acc += a_i * f_i`` to the bit;
            # a single column would be summed pairwise, its running sum is sequential
            if hi - lo > 1:
                np.add.reduce(products, axis=0, out=acc[lo:hi])
            else:
                acc[lo] = np.add.accumulate(products[:, 0])[-1]
        out[w.name] = acc.astype(np.dtype(w.dtype), copy=False).reshape(w.shape)
    common = set.intersection(*(set(m) for m in metrics)) - {fk.AGG_WEIGHT, fk.NUM_EXAMPLES}
    merged: dict[str, float] = {}
    for key in sorted(common):
        values = [_number(m[key]) for m in metrics]
        if all(v is not None for v in values):
            merged[key] = float(sum(float(v or 0.0) * f for v, f in zip(values, factors,
                                                                      strict=True)))
    merged[fk.NUM_EXAMPLES] = float(sum(_number(m.get(fk.NUM_EXAMPLES)) or 0.0
                                        for m in metrics))
    return out, {k: v for k, v in merged.items() if math.isfinite(v)}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)

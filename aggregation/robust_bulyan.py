"""Bulyan with every reply decoded once: Flower's rule, without its per-update garbage collection.

Flower's ``Bulyan.aggregate_train`` (flwr 1.42) selects ``theta = n - 2f`` updates with
MultiKrum (``select_multikrum``, which decodes every reply), then decodes the selected ones
again with ``ArrayRecord.to_numpy_ndarrays(keep_input=False)``, which runs a full
``gc.collect()`` for every selected reply. In a process that holds a simulation (the plan
runtime, data sets, thousands of messages) each collection takes a large fraction of a second,
so a round of 20 replies spent several seconds to half a minute there, against milliseconds for
the arithmetic.

:class:`StackedBulyan` computes the same rule on the replies decoded once (no collection, the
replies are left intact): the MultiKrum scores on the replies' flattened weights stacked into
one matrix (Flower's ``compute_distances`` arithmetic: ``|x|^2 + |y|^2 - 2 x.y``), the same
``argsort`` selections, then Flower's own coordinate-wise median and
``aggregate_n_closest_weights`` over the selected updates in Flower's order. The aggregate is
the same to the last bit (``tests/simulation/test_bulyan.py`` compares it with Flower's on
random inputs). A custom ``selection_rule`` falls back to Flower's implementation.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARN

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.supercore import log


def multikrum_rows(flat: np.ndarray, num_malicious: int, num_select: int) -> list[int]:
    """The rows MultiKrum selects from ``flat`` (one flattened update a row), best first.

    The same arithmetic and sorts as Flower's ``select_multikrum`` on the same updates: each
    row's score is the sum of its squared distances to its ``n - f - 2`` nearest other rows.
    """
    norms = np.square(flat).sum(axis=1)
    distances = norms[:, None] + norms[None, :] - 2 * flat @ flat.T
    closest = max(1, len(flat) - num_malicious - 2)
    scores = [np.sum(row[np.argsort(row)[1:closest + 1].tolist()]) for row in distances]
    return [int(i) for i in np.argsort(scores)[:num_select]]


class StackedBulyan(Bulyan):
    """Flower's :class:`~flwr.serverapp.strategy.Bulyan`, decoding each reply once.

    Same parameters as Flower's; ``aggregate_train`` returns the same arrays and metrics (and
    ``(None, None)`` below ``4 * num_malicious_nodes + 3`` replies, as Flower's).
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.selection_rule is not select_multikrum:
            return super().aggregate_train(server_round, replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        f = self.num_malicious_nodes
        if len(valid) < 4 * f + 3:
            log(WARN, "Insufficient replies, skipping Bulyan aggregation: required at least "
                "%d (4*num_malicious_nodes + 3), but received %d.", 4 * f + 3, len(valid))
            return None, None
        contents: list[RecordDict] = [msg.content for msg in valid]
        key = next(iter(contents[0].array_records))
        names = list(contents[0].array_records[key].keys())
        decoded = [[c.array_records[key][k].numpy() for k in names] for c in contents]
        flat = np.stack([np.concatenate(layers, axis=None).ravel() for layers in decoded])
        theta = len(valid) - 2 * f
        beta = theta - 2 * f
        best = multikrum_rows(flat, f, theta)
        selected = [decoded[i] for i in best]
        median = [np.median(layer, axis=0) for layer in zip(*selected, strict=True)]
        merged = aggregate_n_closest_weights(median, selected, beta)
        arrays = ArrayRecord({k: Array(np.asarray(a)) for k, a in zip(names, merged,
                                                                         strict=True)})
        metrics = self.train_metrics_aggr_fn([contents[i] for i in best], self.weighted_by_key)
        return arrays, metrics


__all__ = ["StackedBulyan", "multikrum_rows"]

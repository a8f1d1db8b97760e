"""The drift tracker's per-node readings and losses in arrays indexed by node slot.

:class:`~aggregation.selection.tracking.DriftTracker` scores every connected node each round;
walking every node's :class:`~edgefleet.drift.baseline.Reading` object to do so costs about a
microsecond per node and attribute. :class:`ReadingTable` keeps the numbers the score needs
(the reading's ``difference`` and ``change``, the latest first-epoch loss and its round) in
numpy arrays, updated only for the nodes whose reading or loss changed, so a round's scores
are array operations over the fleet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from edgefleet.drift.baseline import Reading

NEVER = -(2**62)  # the round of a node without a loss


class ReadingTable:
    """Readings and first-epoch losses by node slot (see the module notes)."""

    def __init__(self) -> None:
        self.slot: dict[int, int] = {}
        self.ids = np.zeros(0, np.uint64)
        self.present = np.zeros(0, bool)  # the node has a reading
        self.difference = np.zeros(0, np.float64)
        self.has_change = np.zeros(0, bool)
        self.change = np.zeros(0, np.float64)
        self.loss_round = np.zeros(0, np.int64)
        self.loss = np.zeros(0, np.float64)

    def __len__(self) -> int:
        return len(self.slot)

    def _index(self, node: int) -> int:
        i = self.slot.get(node)
        if i is not None:
            return i
        i = self.slot[node] = len(self.slot)
        if i >= len(self.ids):
            grow = max(64, len(self.ids))
            self.ids = np.concatenate([self.ids, np.zeros(grow, np.uint64)])
            self.present = np.concatenate([self.present, np.zeros(grow, bool)])
            self.difference = np.concatenate([self.difference, np.zeros(grow)])
            self.has_change = np.concatenate([self.has_change, np.zeros(grow, bool)])
            self.change = np.concatenate([self.change, np.zeros(grow)])
            self.loss_round = np.concatenate([self.loss_round, np.full(grow, NEVER, np.int64)])
            self.loss = np.concatenate([self.loss, np.zeros(grow)])
        self.ids[i] = node
        return i

    def set_reading(self, node: int, reading: Reading | None) -> None:
        i = self._index(node)
        self.present[i] = reading is not None
        if reading is not None:
            self.difference[i] = reading.difference
            self.has_change[i] = reading.change is not None
            self.change[i] = 0.0 if reading.change is None else reading.change

    def set_readings(self, items: Iterable[tuple[int, Reading | None]]) -> None:
        for node, reading in items:
            self.set_reading(node, reading)

    def set_loss(self, node: int, server_round: int, loss: float) -> None:
        i = self._index(node)
        self.loss_round[i] = server_round
        self.loss[i] = loss

    def slots_of(self, nodes: Sequence[int]) -> np.ndarray:
        """The slot of each node, -1 for a node never seen."""
        get = self.slot.get
        return np.fromiter((get(n, -1) for n in nodes), np.int64, len(nodes))

"""Uniform selection: every eligible node has the same chance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aggregation.selection.base import Candidate, by_node, check_k


class UniformSelection:
    """Pick ``k`` eligible nodes uniformly at random, without replacement.

    What Flower's own strategies do (``sample_nodes``), restricted to the nodes whose query
    reply said they are eligible. Has no parameters and no memory.

    Examples
    --------
    >>> import numpy as np
    >>> from aggregation.selection import Candidate, UniformSelection
    >>> cands = [Candidate(node_id=i) for i in range(10)]
    >>> len(UniformSelection().select(cands, 3, 1, np.random.default_rng(0)))
    3
    """

    name = "uniform"

    def select(
        self,
        candidates: Sequence[Candidate],
        k: int,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Return ``min(k, len(candidates))`` distinct node ids, uniformly drawn (from the
        candidates in node-id order, so a seed picks the same nodes every run)."""
        n = check_k(candidates, k)
        candidates = by_node(candidates)
        if n == 0:
            return []
        idx = rng.choice(len(candidates), size=n, replace=False)
        return [candidates[int(i)].node_id for i in idx]

    def __repr__(self) -> str:
        return "UniformSelection()"

"""Byzantine clients: a seeded ``fraction`` of the fleet that sends poisoned updates.

With ``delta = w_trained - w_global`` (the honest update):

==========  =====================================================================
kind        what the adversary sends
==========  =====================================================================
sign_flip   ``w_global - delta`` (the update reversed)
scaled      ``w_global + scale * delta`` (a boosted update)
noise       ``w_global + N(0, noise_std^2)`` (no training signal at all)
label_flip  honest training on labels ``n_classes - 1 - y`` (data poisoning)
==========  =====================================================================

The update is sent with the honest ``num-examples``; whether validation (the norm bounds) or a
robust strategy (Krum, FedTrimmedAvg) stops it is what an experiment measures.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from simulation.config import AdversaryConfig
from simulation.scenarios import chosen

_SALT = 4000


class Adversaries:
    """Which clients are Byzantine, and what each sends."""

    def __init__(self, cfg: AdversaryConfig, count: int, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.clients = (chosen(cfg.fraction, count, seed, _SALT) if cfg.kind != "none"
                        else np.zeros(0, np.int64))
        self._members = set(int(c) for c in self.clients)

    def is_adversary(self, client: int) -> bool:
        return client in self._members

    def labels(self, client: int, y: np.ndarray, n_classes: int) -> np.ndarray:
        """The labels the client trains on (flipped for a ``label_flip`` adversary)."""
        if self.cfg.kind == "label_flip" and self.is_adversary(client):
            return (n_classes - 1 - np.asarray(y)).astype(np.int32)
        return np.asarray(y)

    def poison(self, client: int, server_round: int, global_w: Mapping[str, np.ndarray],
               trained: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The weights the client sends (the trained ones for honest clients)."""
        kind = self.cfg.kind
        if kind in ("none", "label_flip") or not self.is_adversary(client):
            return dict(trained)
        rng = np.random.default_rng([self.seed, _SALT + 1, client, server_round])
        out = {}
        for k, w in trained.items():
            g = np.asarray(global_w[k])
            if kind == "sign_flip":
                new = g - (w - g)
            elif kind == "scaled":
                new = g + self.cfg.scale * (w - g)
            else:
                new = g + rng.normal(0.0, self.cfg.noise_std, size=g.shape)
            out[k] = np.asarray(new, dtype=w.dtype)
        return out

"""Drift scenarios: what happens to a client's data from a given round on.

A :class:`Scenario` drifts a seeded ``fraction`` of the clients. Its *intensity* in round ``r``
is 0 before ``start_round`` and then

* ``sudden``: 1;
* ``gradual``: ``min(1, (r - start_round + 1) / ramp_rounds)``;
* ``recurring``: 1 for ``period`` rounds, 0 for ``period`` rounds, and so on.

At intensity ``s`` (times ``strength``) a drifted client's local examples change:

=============  ===========================================================================
kind           effect on ``(x, y)``
=============  ===========================================================================
noise          ``x + N(0, (s * std_j)^2)`` per feature ``j`` (``std_j`` of the training split)
brightness     ``x + 0.25 * s * (hi - lo)`` (``lo``, ``hi``: the training split's range)
scale          ``x * (1 + s)``
rotation       images rotated by ``30° * s`` about their centre (nearest pixel; image data)
feature_shift  a seeded ``features`` share of the columns moves by ``s * std_j``
label_prior    examples outside ``classes`` (default: the lower half) are dropped with
               probability ``min(1, s)`` (at least one example stays): the label prior shifts
label_swap     concept drift: the labels of ``classes`` (default ``[0, 1]``) are rotated
               (``a -> b -> ... -> a``) for a ``min(1, s)`` share of those examples
=============  ===========================================================================

Covariate results are clipped to ``[lo, hi]`` for image data. Everything is a pure function of
``(seed, client, round)``: the server (evaluation) and the clients (training) see the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulation.config import DriftConfig


@dataclass(frozen=True)
class FeatureStats:
    """What covariate drift scales by: per-feature std, global range, image shape."""

    std: np.ndarray
    low: float
    high: float
    image_shape: tuple[int, ...] | None = None

    @classmethod
    def of(cls, x: np.ndarray, image_shape: tuple[int, ...] | None) -> FeatureStats:
        std = np.asarray(x, np.float64).std(axis=0)
        std = np.where(std > 1e-12, std, 1.0).astype(np.float32)
        return cls(std, float(np.min(x)), float(np.max(x)), image_shape)


def chosen(fraction: float, count: int, seed: int, salt: int) -> np.ndarray:
    """The ``round(fraction * count)`` clients (sorted ids) a scenario or adversary affects."""
    k = round(fraction * count)
    rng = np.random.default_rng([seed, salt])
    return np.sort(rng.permutation(count)[:k])


class Scenario:
    """One configured drift (see the module table) over ``count`` clients."""

    def __init__(self, cfg: DriftConfig, count: int, seed: int, index: int,
                 stats: FeatureStats, n_classes: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.index = index
        self.stats = stats
        self.n_classes = n_classes
        self.clients = chosen(cfg.fraction, count, seed, 1000 + index)
        self._members = set(int(c) for c in self.clients)
        default = (list(range(max(1, n_classes // 2))) if cfg.kind == "label_prior"
                   else [0, 1])
        self.classes = [c for c in (cfg.classes or default) if 0 <= c < n_classes]

    def intensity(self, server_round: int) -> float:
        c = self.cfg
        if server_round < c.start_round:
            return 0.0
        k = server_round - c.start_round
        if c.mode == "sudden":
            return 1.0
        if c.mode == "gradual":
            return min(1.0, (k + 1) / c.ramp_rounds)
        return 1.0 if (k // c.period) % 2 == 0 else 0.0

    def affects(self, client: int) -> bool:
        return client in self._members

    def apply(self, x: np.ndarray, y: np.ndarray, client: int, server_round: int,
              *, force: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The client's examples in ``server_round`` (``force``: this intensity, any client)."""
        if force is None:
            if not self.affects(client):
                return x, y
            s = self.intensity(server_round)
        else:
            s = force
        if s <= 0:
            return x, y
        return self.transform(x, y, s * self.cfg.strength,
                              np.random.default_rng([self.seed, 2000 + self.index,
                                                     client if client >= 0 else 1 << 40]))

    def transform(self, x: np.ndarray, y: np.ndarray, s: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
        kind, st = self.cfg.kind, self.stats
        x = np.asarray(x, np.float32)
        if kind == "label_prior":
            return _drop_classes(x, y, self.classes, min(1.0, s), rng)
        if kind == "label_swap":
            return x, _swap(y, self.classes, min(1.0, s), rng)
        if kind == "noise":
            out = x + (rng.standard_normal(x.shape).astype(np.float32) * (s * st.std))
        elif kind == "brightness":
            out = x + np.float32(0.25 * s * (st.high - st.low))
        elif kind == "scale":
            out = x * np.float32(1.0 + s)
        elif kind == "rotation":
            out = _rotate(x, st.image_shape, 30.0 * s)
        else:  # feature_shift
            cols = chosen(self.cfg.features, x.shape[1], self.seed, 3000 + self.index)
            out = x.copy()
            out[:, cols] += s * st.std[cols]
        if st.image_shape is not None:
            out = np.clip(out, st.low, st.high)
        return out.astype(np.float32), y


def _drop_classes(x: np.ndarray, y: np.ndarray, keep: list[int], p: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    other = ~np.isin(y, keep)
    drop = other & (rng.random(len(y)) < p)
    if drop.all():
        drop[int(np.flatnonzero(drop)[0])] = False
    return x[~drop], y[~drop]


def _swap(y: np.ndarray, classes: list[int], p: float, rng: np.random.Generator) -> np.ndarray:
    out = np.asarray(y).copy()
    if len(classes) < 2:
        return out
    hit = rng.random(len(out)) < p
    for a, b in zip(classes, classes[1:] + classes[:1], strict=True):
        out[(np.asarray(y) == a) & hit] = b
    return out


def _rotate(x: np.ndarray, image_shape: tuple[int, ...] | None, degrees: float) -> np.ndarray:
    if image_shape is None:
        raise ValueError("rotation drift needs image data (the data set has no image shape)")
    h, w = image_shape[0], image_shape[1]
    imgs = x.reshape(len(x), h, w, -1)
    t = math.radians(degrees)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.mgrid[0:h, 0:w]
    # source pixel of each target pixel (inverse rotation), nearest neighbour
    sy = np.rint(cy + (yy - cy) * math.cos(t) + (xx - cx) * math.sin(t)).astype(int)
    sx = np.rint(cx - (yy - cy) * math.sin(t) + (xx - cx) * math.cos(t)).astype(int)
    inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
    out = np.zeros_like(imgs)
    out[:, inside] = imgs[:, sy[inside], sx[inside]]
    return out.reshape(x.shape)

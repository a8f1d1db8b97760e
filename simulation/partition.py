"""Non-IID shares of a data set for simulated devices, and the input shifts that make drift.

* :func:`dirichlet_partition` splits example indices into label-skewed shares: for every class,
  the shares' proportions are drawn from ``Dirichlet(alpha)`` (small ``alpha``: each device sees
  few classes; large: nearly IID), redrawn until every share has at least ``min_size`` examples.
* :func:`apply_shift` changes the *inputs* of a share the way a device's sensor might drift:
  ``brightness`` adds a constant (and clips to the feature range), ``noise`` adds Gaussian noise,
  ``contrast`` scales around the mid-range. Labels are unchanged.

Everything is seeded: the same arguments give the same shares on every machine.

Example
-------
>>> import numpy as np
>>> y = np.repeat(np.arange(10), 50)
>>> parts = dirichlet_partition(y, 4, alpha=0.5, seed=0, min_size=20)
>>> sum(len(p) for p in parts) == len(y)
True
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from simulation.errors import PartitionError

Shift = Literal["none", "brightness", "noise", "contrast"]
SHIFTS: tuple[Shift, ...] = ("none", "brightness", "noise", "contrast")
MAX_DRAWS = 1000


def dirichlet_partition(
    y: np.ndarray, n_parts: int, *, alpha: float = 0.5, seed: int = 0, min_size: int = 1
) -> list[np.ndarray]:
    """Split ``range(len(y))`` into ``n_parts`` label-skewed shares (sorted index arrays).

    Parameters
    ----------
    y : np.ndarray
        Integer class labels ``[n]``.
    n_parts : int
        How many shares (devices).
    alpha : float (default: 0.5)
        Concentration of the per-class Dirichlet draw; ``> 0``.
    seed : int (default: 0)
        Seed of the draws.
    min_size : int (default: 1)
        Smallest acceptable share; draws are repeated (at most 1000 times) until it holds.

    Raises
    ------
    PartitionError
        ``n_parts < 1``, ``alpha <= 0``, ``n_parts * min_size > len(y)``, or no draw met
        ``min_size``.
    """
    y = np.asarray(y)
    if n_parts < 1 or not alpha > 0 or min_size < 0:
        raise PartitionError(f"need n_parts >= 1, alpha > 0, min_size >= 0; got {n_parts}, "
                             f"{alpha}, {min_size}")
    if n_parts * min_size > len(y):
        raise PartitionError(f"{n_parts} shares of at least {min_size} need more than "
                             f"{len(y)} examples")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(n_parts)]
        for cls in classes:
            idx = np.flatnonzero(y == cls)
            idx = idx[rng.permutation(idx.size)]
            cuts = (np.cumsum(rng.dirichlet(np.full(n_parts, alpha))) * idx.size).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts[:-1]), strict=True):
                part.extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise PartitionError(f"no Dirichlet(alpha={alpha}) draw gave every one of {n_parts} shares "
                         f"{min_size} examples; raise alpha or lower min_size")


def apply_shift(
    x: np.ndarray, kind: Shift, *, strength: float = 1.0, low: float = 0.0, high: float = 16.0,
    seed: int = 0,
) -> np.ndarray:
    """``x`` with its inputs shifted (a new float32 array; ``x`` is not modified).

    Parameters
    ----------
    x : np.ndarray
        Raw features ``[n, ...]``.
    kind : {"none", "brightness", "noise", "contrast"}
        ``brightness``: ``+ 0.25 * strength * (high - low)``; ``noise``: Gaussian noise with
        standard deviation ``0.15 * strength * (high - low)``; ``contrast``: values pulled
        towards the mid-range by a factor ``1 / (1 + strength)``.
    strength : float (default: 1.0)
        How far the shift goes (``>= 0``).
    low, high : float (default: 0.0, 16.0)
        The feature range; results are clipped to it (digits pixels are 0..16).
    seed : int (default: 0)
        Seed of the noise.
    """
    if kind not in SHIFTS:
        raise PartitionError(f"unknown shift {kind!r}; choose one of {', '.join(SHIFTS)}")
    if not strength >= 0 or not high > low:
        raise PartitionError(f"need strength >= 0 and high > low; got {strength}, {low}, {high}")
    out = np.asarray(x, dtype=np.float32).copy()
    span = high - low
    if kind == "brightness":
        out += 0.25 * strength * span
    elif kind == "noise":
        rng = np.random.default_rng(seed)
        out += rng.normal(0.0, 0.15 * strength * span, size=out.shape).astype(np.float32)
    elif kind == "contrast":
        mid = (low + high) / 2.0
        out = mid + (out - mid) / (1.0 + strength)
    return np.clip(out, low, high).astype(np.float32)


def resample(x: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` rows of ``x`` drawn with replacement (the device's traffic from its own data)."""
    if len(x) == 0:
        raise PartitionError("cannot resample an empty share")
    rng = np.random.default_rng(seed)
    return np.asarray(x[rng.integers(0, len(x), size=n)])

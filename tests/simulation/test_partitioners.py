"""Partitions: every example once, the sizes and label histograms each kind promises, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.errors import PartitionError
from simulation.partitioners import PartitionSpec, label_histograms, partition

Y = np.repeat(np.arange(10), 100)  # 1,000 examples, 10 balanced classes


def _check_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n  # each example exactly once
    assert all(len(p) > 0 for p in parts)


def test_iid_equal_sizes_and_balanced_labels() -> None:
    parts = partition(Y, 10, PartitionSpec("iid"), seed=0)
    _check_cover(parts, len(Y))
    assert [len(p) for p in parts] == [100] * 10
    hist = label_histograms(Y, parts, 10)
    assert (hist > 0).sum(axis=1).min() >= 8  # nearly every class everywhere
    assert hist.max() <= 25


def test_dirichlet_is_label_skewed_and_smaller_alpha_more_so() -> None:
    skewed = label_histograms(Y, partition(Y, 20, PartitionSpec("dirichlet", alpha=0.1),
                                           seed=0), 10)
    mild = label_histograms(Y, partition(Y, 20, PartitionSpec("dirichlet", alpha=100.0),
                                         seed=0), 10)
    def dominant(h: np.ndarray) -> float:  # share of a client's largest class, averaged
        return float(np.mean(h.max(axis=1) / h.sum(axis=1)))
    assert dominant(skewed) > 0.5 > dominant(mild)
    assert dominant(mild) < 0.25


def test_pathological_k_classes_per_client() -> None:
    parts = partition(Y, 20, PartitionSpec("pathological", classes_per_client=2), seed=1)
    _check_cover(parts, len(Y))
    hist = label_histograms(Y, parts, 10)
    assert ((hist > 0).sum(axis=1) <= 2).all()


def test_quantity_skew_sizes_vary_labels_stay_mixed() -> None:
    parts = partition(Y, 10, PartitionSpec("quantity", quantity_alpha=0.5, min_size=5), seed=2)
    _check_cover(parts, len(Y))
    sizes = np.asarray([len(p) for p in parts])
    assert sizes.min() >= 5 and sizes.max() > 3 * sizes.min()
    big = parts[int(np.argmax(sizes))]
    assert len(np.unique(Y[big])) == 10  # a large share is still IID in labels


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological", "quantity"])
def test_deterministic_by_seed(kind: str) -> None:
    spec = PartitionSpec(kind)
    a, b = partition(Y, 8, spec, seed=3), partition(Y, 8, spec, seed=3)
    c = partition(Y, 8, spec, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_refuses_impossible_splits() -> None:
    with pytest.raises(PartitionError, match="cannot give"):
        partition(Y[:5], 10, PartitionSpec("iid"), seed=0)
    with pytest.raises(PartitionError, match="classes_per_client"):
        partition(Y, 4, PartitionSpec("pathological", classes_per_client=11), seed=0)
    with pytest.raises(PartitionError, match="unknown partition"):
        partition(Y, 4, PartitionSpec("zipf"), seed=0)

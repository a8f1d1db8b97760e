"""Client partitions of a data set: IID, Dirichlet over labels, pathological, quantity skew.

Every partitioner but quantity skew is Flower Datasets' own (``flwr_datasets.partitioner``):
the labels go into an in-memory Hugging Face ``datasets.Dataset`` with an ``idx`` column (no
download, nothing written), the partitioner splits it, and each partition's ``idx`` column is the
client's list of example indices. What each kind uses:

==============  ==========================================================================
kind            how
==============  ==========================================================================
iid             rows shuffled by ``seed``, then ``IidPartitioner`` (equal contiguous shards)
dirichlet       ``DirichletPartitioner(alpha, min_partition_size, self_balancing=False)``
pathological    ``PathologicalPartitioner(num_classes_per_partition=k, "random")``
quantity        sizes ``~ min_size + Dirichlet(quantity_alpha) * (n - clients * min_size)``
                (largest-remainder rounding), rows shuffled by ``seed``, then
                ``SizePartitioner(sizes)``; labels stay IID, only the amounts differ
==============  ==========================================================================

The same arguments give the same partitions on every machine (every draw is seeded).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulation.errors import PartitionError

PARTITIONS = ("iid", "dirichlet", "pathological", "quantity")


@dataclass(frozen=True)
class PartitionSpec:
    """How to split the training examples among clients (see the module table)."""

    kind: str = "iid"
    alpha: float = 0.5
    classes_per_client: int = 2
    quantity_alpha: float = 1.0
    min_size: int = 1


def _labels_dataset(y: np.ndarray, seed: int | None) -> Any:
    from datasets import Dataset

    idx = np.arange(len(y), dtype=np.int64)
    if seed is not None:
        idx = np.random.default_rng(seed).permutation(idx)
    # arrow format: the partitioners read the label column whole (``dataset["label"]``), which
    # in the default and numpy formats is a ``datasets.Column`` iterated row by row (about a
    # minute for 50,000 rows); in arrow format it is one Arrow array
    return Dataset.from_dict({"label": np.asarray(y)[idx].astype(np.int64),
                              "idx": idx}).with_format("arrow")


def _quantity_sizes(n: int, clients: int, alpha: float, min_size: int, seed: int) -> list[int]:
    spare = n - clients * min_size
    shares = np.random.default_rng(seed).dirichlet(np.full(clients, alpha)) * spare
    sizes = np.floor(shares).astype(np.int64)
    rest = int(spare - sizes.sum())
    sizes[np.argsort(-(shares - sizes), kind="stable")[:rest]] += 1
    return [int(s) + min_size for s in sizes]


def _partitioner(spec: PartitionSpec, y: np.ndarray, clients: int, seed: int) -> Any:
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
        SizePartitioner,
    )

    if spec.kind == "iid":
        return IidPartitioner(clients), _labels_dataset(y, seed)
    if spec.kind == "dirichlet":
        return (DirichletPartitioner(clients, "label", alpha=spec.alpha,
                                     min_partition_size=spec.min_size, self_balancing=False,
                                     seed=seed), _labels_dataset(y, None))
    if spec.kind == "pathological":
        n_classes = len(np.unique(y))
        if not 1 <= spec.classes_per_client <= n_classes:
            raise PartitionError(f"classes_per_client must be in [1, {n_classes}], "
                                 f"got {spec.classes_per_client}")
        return (PathologicalPartitioner(clients, "label", spec.classes_per_client,
                                        class_assignment_mode="random", seed=seed),
                _labels_dataset(y, None))
    if spec.kind == "quantity":
        if not spec.quantity_alpha > 0:
            raise PartitionError(f"quantity_alpha must be > 0, got {spec.quantity_alpha}")
        sizes = _quantity_sizes(len(y), clients, spec.quantity_alpha, max(spec.min_size, 1), seed)
        return SizePartitioner(sizes), _labels_dataset(y, seed)
    raise PartitionError(f"unknown partition {spec.kind!r}; choose from {', '.join(PARTITIONS)}")


def _client_indices(partitioner: Any, dataset: Any, clients: int) -> list[np.ndarray]:
    """Each partition's ``idx`` column, sorted.

    ``load_partition`` builds one Arrow selection per client (about 4 ms each); when the
    partitioner keeps its row assignment (Dirichlet, pathological and size partitioners do, in
    ``_partition_id_to_indices`` after the first ``load_partition``), it is read directly so
    that 10,000 clients take a second, not a minute. Both give the same rows.
    """
    first = np.asarray(partitioner.load_partition(0)["idx"], dtype=np.int64)
    rows = getattr(partitioner, "_partition_id_to_indices", None)
    if isinstance(rows, dict) and len(rows) == clients:
        idx = np.asarray(dataset["idx"], dtype=np.int64)
        return [np.sort(idx[np.asarray(rows[i], dtype=np.int64)]) for i in range(clients)]
    return [np.sort(first)] + [
        np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64))
        for i in range(1, clients)]


def partition(y: np.ndarray, clients: int, spec: PartitionSpec, *, seed: int = 0
              ) -> list[np.ndarray]:
    """Split ``range(len(y))`` among ``clients``: one sorted ``int64`` index array per client.

    Raises
    ------
    PartitionError
        Unknown kind, bad parameters, fewer examples than ``clients * max(min_size, 1)``, or a
        split Flower Datasets refuses (its message is kept).
    """
    y = np.asarray(y)
    if clients < 1:
        raise PartitionError(f"need at least one client, got {clients}")
    if len(y) < clients * max(spec.min_size, 1):
        raise PartitionError(f"{len(y)} examples cannot give {clients} clients at least "
                             f"{max(spec.min_size, 1)} each; use fewer clients or more data")
    partitioner, dataset = _partitioner(spec, y, clients, seed)
    partitioner.dataset = dataset
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Dirichlet's "redrawing" notes
            parts = _client_indices(partitioner, dataset, clients)
    except ValueError as exc:
        raise PartitionError(f"{spec.kind} partition of {len(y)} examples into {clients} "
                             f"clients failed: {exc}") from exc
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise PartitionError(f"{len(empty)} of {clients} clients got no example "
                             f"({spec.kind}); use fewer clients, more data or a larger alpha")
    return parts


def label_histograms(y: np.ndarray, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """``[clients, n_classes]`` counts of each label in each partition."""
    y = np.asarray(y)
    return np.stack([np.bincount(y[p], minlength=n_classes) for p in parts])

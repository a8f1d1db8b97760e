"""Replay from frozen inputs: explicit partitions, initial weights and example orders (NPZ).

A frozen-inputs file makes a run exactly reproducible and comparable with another framework at
the weight level (:mod:`simulation.tff_backend` feeds the same file to TensorFlow Federated).
Its arrays:

==========================  ===================================================================
``partition/<client>``      the client's example indices into the experiment's training split
``weights/<name>``          the initial global weights, by the plan's weight names
``order/<round>/<client>``  the client's example order in that round: positions into its own
                            examples, ``[n]`` for one epoch or ``[epochs, n]``; a client without
                            an order in a round does not take part in it
==========================  ===================================================================

A replay needs the reference's rules, which :func:`check_replay` enforces: drop-remainder
batches (``training.batch_rule = "drop"``), client weights equal to the examples trained
(``training.weighting = "examples-trained"``), every client with an order trains (so
``clients.per_round`` = ``clients.count`` and ``over_selection = 1``), no drift steering, no
drop-out, availability ``always``, no adversaries. :func:`freeze` writes such a file for an
experiment (seeded partitions, the plan's weights, seeded per-round orders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.errors import WeightsError
from edgefleet.plan import PlanManifest, check_weights
from simulation.config import Experiment
from simulation.errors import ConfigError


@dataclass
class FrozenInputs:
    """The arrays of a frozen-inputs file, checked."""

    partitions: list[np.ndarray]
    initial_weights: dict[str, np.ndarray]
    orders: dict[str, np.ndarray]


def check_replay(exp: Experiment) -> None:
    """:class:`ConfigError` naming every setting a replay cannot have (see the module notes)."""
    bad = []
    if exp.training.batch_rule != "drop":
        bad.append("training.batch_rule must be 'drop'")
    if exp.training.weighting != "examples-trained":
        bad.append("training.weighting must be 'examples-trained'")
    if exp.clients.target() != exp.clients.count or exp.clients.over_selection != 1.0:
        bad.append("clients.per_round must equal clients.count and over_selection be 1.0")
    if exp.selection.steering:
        bad.append("selection.steering must be off")
    if exp.selection.max_weight_ratio:
        bad.append("selection.max_weight_ratio must be 0 (no weight cap)")
    if exp.traces.availability != "always" or exp.traces.dropout:
        bad.append("traces must be 'always' without drop-out")
    if exp.adversary.kind != "none" and exp.adversary.fraction:
        bad.append("no adversaries")
    if bad:
        raise ConfigError("a replay needs the reference's rules: " + "; ".join(bad))


def load_frozen(path: Path, exp: Experiment, manifest: PlanManifest, n_train: int
                ) -> FrozenInputs:
    """Read and check ``path`` against the experiment, the plan and the training split."""
    check_replay(exp)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"replay: cannot read {path}: {exc}") from exc
    count = exp.clients.count
    parts = []
    for c in range(count):
        p = arrays.get(f"partition/{c}")
        if p is None:
            raise ConfigError(f"replay: {path} has no partition/{c} ({count} clients)")
        if p.ndim != 1 or not np.issubdtype(p.dtype, np.integer) or (
                p.size and (p.min() < 0 or p.max() >= n_train)):
            raise ConfigError(f"replay: partition/{c} must be indices in [0, {n_train})")
        parts.append(p.astype(np.int64))
    weights = {k[len("weights/"):]: v for k, v in arrays.items() if k.startswith("weights/")}
    try:
        check_weights(manifest.weights, weights)
    except WeightsError as exc:
        raise ConfigError(f"replay: initial weights do not fit the plan: {exc}") from exc
    orders = {k[len("order/"):]: v for k, v in arrays.items() if k.startswith("order/")}
    for key, order in orders.items():
        r, _, c = key.partition("/")
        if not (r.isdigit() and c.isdigit() and int(c) < count):
            raise ConfigError(f"replay: bad order key order/{key}")
        n = len(parts[int(c)])
        if order.ndim not in (1, 2) or not np.issubdtype(order.dtype, np.integer) or (
                order.size and (order.min() < 0 or order.max() >= n)):
            raise ConfigError(f"replay: order/{key} must be positions in [0, {n})")
    return FrozenInputs(parts, weights, orders)


def freeze(exp: Experiment, path: Path) -> Path:
    """Write frozen inputs for ``exp``: its partitions, the plan's weights, seeded orders.

    Every client trains every round (``training.epochs`` epochs, each its own permutation,
    drawn from ``(seed, round, client)``).
    """
    from edgefleet.plan import load_weights
    from edgefleet.runtime import MANIFEST_FILE, WEIGHTS_FILE
    from simulation.data import load_data
    from simulation.partitioners import PartitionSpec, partition
    from simulation.zoo import resolve_plan

    ds = load_data(exp.data, exp.seed)
    plan = resolve_plan(exp.model, ds, exp.seed)
    manifest = PlanManifest.load(plan / MANIFEST_FILE)
    weights = load_weights(plan / WEIGHTS_FILE, manifest=manifest)
    p = exp.partition
    parts = partition(ds.y_train, exp.clients.count,
                      PartitionSpec(p.kind, p.alpha, p.classes_per_client, p.quantity_alpha,
                                    p.min_size), seed=exp.seed)
    out: dict[str, np.ndarray] = {f"partition/{c}": idx for c, idx in enumerate(parts)}
    out.update({f"weights/{k}": np.asarray(v) for k, v in weights.items()})
    for r in range(1, exp.rounds + 1):
        for c, idx in enumerate(parts):
            rng = np.random.default_rng([exp.seed, 7000, r, c])
            out[f"order/{r}/{c}"] = np.stack([rng.permutation(len(idx))
                                              for _ in range(exp.training.epochs)])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)  # type: ignore[arg-type]
    return path

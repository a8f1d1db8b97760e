"""Everything a run needs before the engine starts: data, plan, partitions, the population.

The population is saved to ``<out_dir>/inputs/`` (:mod:`simulation.population`) for the
workers. A replay (:mod:`simulation.replay`) brings its own partitions, initial weights and
orders; otherwise partitions come from :mod:`simulation.partitioners` and the initial weights
are the plan's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.plan import load_weights
from edgefleet.runtime import MANIFEST_FILE, WEIGHTS_FILE
from simulation.config import Experiment
from simulation.data import load_data
from simulation.partitioners import PartitionSpec, partition
from simulation.population import Population
from simulation.zoo import resolve_plan


@dataclass
class PreparedRun:
    """The inputs of one run, ready for the engine."""

    plan_dir: Path
    run_dir: Path
    population: Population
    initial_weights: dict[str, np.ndarray]


def prepare_run(exp: Experiment) -> PreparedRun:
    from edgefleet.plan import PlanManifest

    ds = load_data(exp.data, exp.seed)
    plan_dir = resolve_plan(exp.model, ds, exp.seed)
    manifest = PlanManifest.load(plan_dir / MANIFEST_FILE)
    weights = load_weights(plan_dir / WEIGHTS_FILE, manifest=manifest)
    orders: dict[str, np.ndarray] = {}
    if exp.replay.path:
        from simulation.replay import load_frozen

        frozen = load_frozen(Path(exp.replay.path), exp, manifest, len(ds.y_train))
        parts, weights, orders = frozen.partitions, frozen.initial_weights, frozen.orders
    else:
        p = exp.partition
        spec = PartitionSpec(p.kind, p.alpha, p.classes_per_client, p.quantity_alpha,
                             p.min_size)
        parts = partition(ds.y_train, exp.clients.count, spec, seed=exp.seed)
    pop = Population.build(exp, ds, parts, orders)
    run_dir = exp.out_dir() / "inputs"
    pop.save(run_dir)
    return PreparedRun(plan_dir, run_dir, pop, {k: np.asarray(v) for k, v in weights.items()})

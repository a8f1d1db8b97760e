"""The simulated fleet's frozen inputs: data, partitions, drift, adversaries, traces.

The driver builds a :class:`Population` once per run and saves it to the run directory
(``inputs.npz`` and ``experiment.json``); every simulation worker loads it from there (once per
worker process) so the server's evaluation and the clients' training see exactly the same data.
:meth:`Population.client_data` is a pure function of ``(client, round)``.

``inputs.npz`` holds ``x_train``, ``y_train``, ``x_test``, ``y_test``, ``part_index`` (every
client's example indices, concatenated) and ``part_offsets`` (``clients + 1`` offsets into it),
and, for a replay (:mod:`simulation.replay`), the per-round orders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.datasets import Dataset
from simulation.adversaries import Adversaries
from simulation.config import Experiment
from simulation.scenarios import FeatureStats, Scenario
from simulation.traces import Traces

INPUTS_FILE = "inputs.npz"
EXPERIMENT_FILE = "experiment.json"


def pack_parts(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(parts) + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    index = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    return index, offsets


@dataclass
class Population:
    """Everything the clients' data depends on (see the module notes)."""

    exp: Experiment
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    part_index: np.ndarray
    part_offsets: np.ndarray
    n_classes: int
    image_shape: tuple[int, ...] | None = None
    orders: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = self.exp.clients.count
        stats = FeatureStats.of(self.x_train, self.image_shape)
        self.scenarios = [Scenario(d, count, self.exp.seed, i, stats, self.n_classes)
                          for i, d in enumerate(self.exp.drift)]
        self.adversaries = Adversaries(self.exp.adversary, count, self.exp.seed)
        self.traces = Traces(self.exp.traces, count, self.exp.seed)
        self._drifted = np.zeros(count, bool)
        for s in self.scenarios:
            self._drifted[s.clients] = True

    @classmethod
    def build(cls, exp: Experiment, ds: Dataset, parts: list[np.ndarray],
              orders: dict[str, np.ndarray] | None = None) -> Population:
        index, offsets = pack_parts(parts)
        return cls(exp, ds.x_train, ds.y_train, ds.x_test, ds.y_test, index, offsets,
                   ds.n_classes, ds.image_shape, dict(orders or {}))

    # --- persistence --------------------------------------------------------------------------
    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Any: numpy 2's savez stub would match these arrays against its allow_pickle flag
        extra: dict[str, Any] = {f"order/{k}": v for k, v in self.orders.items()}
        np.savez(run_dir / INPUTS_FILE, x_train=self.x_train, y_train=self.y_train,
                 x_test=self.x_test, y_test=self.y_test, part_index=self.part_index,
                 part_offsets=self.part_offsets, **extra)
        meta = {"experiment": self.exp.model_dump(mode="json"), "n_classes": self.n_classes,
                "image_shape": list(self.image_shape) if self.image_shape else None}
        (run_dir / EXPERIMENT_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, run_dir: Path) -> Population:
        meta = json.loads((run_dir / EXPERIMENT_FILE).read_text())
        exp = Experiment.model_validate(meta["experiment"])
        with np.load(run_dir / INPUTS_FILE) as f:
            arrays = {k: f[k] for k in f.files}
        orders = {k[len("order/"):]: v for k, v in arrays.items() if k.startswith("order/")}
        shape = tuple(meta["image_shape"]) if meta["image_shape"] else None
        return cls(exp, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                   arrays["y_test"], arrays["part_index"], arrays["part_offsets"],
                   int(meta["n_classes"]), shape, orders)

    # --- the clients ----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self.part_offsets) - 1

    def indices(self, client: int) -> np.ndarray:
        return self.part_index[self.part_offsets[client]:self.part_offsets[client + 1]]

    def drifted(self, client: int) -> bool:
        """Whether any scenario ever drifts ``client``."""
        return bool(self._drifted[client])

    @property
    def drifted_mask(self) -> np.ndarray:
        return self._drifted

    def drift_active(self, server_round: int) -> bool:
        return any(s.intensity(server_round) > 0 for s in self.scenarios)

    def client_data(self, client: int, server_round: int) -> tuple[np.ndarray, np.ndarray]:
        """The client's local examples in ``server_round``, every drift scenario applied."""
        idx = self.indices(client)
        x, y = self.x_train[idx], self.y_train[idx]
        for s in self.scenarios:
            x, y = s.apply(x, y, client, server_round)
        return x, y

    def drifted_test(self, server_round: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The test split as drifted clients see it in ``server_round`` (``None``: no drift)."""
        if not self.scenarios:
            return None
        x, y = self.x_test, self.y_test
        for s in self.scenarios:
            x, y = s.apply(x, y, -1, server_round, force=s.intensity(server_round))
        return x, y

    def order(self, server_round: int, client: int) -> list[np.ndarray] | None:
        """Frozen per-epoch example orders of a replay (``None`` when not replaying)."""
        key = f"{server_round}/{client}"
        if key not in self.orders:
            return None
        arr = self.orders[key]
        return [arr] if arr.ndim == 1 else list(arr)


@lru_cache(maxsize=4)
def load_population(run_dir: str) -> Population:
    """The run's population, loaded once per process (simulation workers share it)."""
    return Population.load(Path(run_dir))

"""The simulated device's ClientApp: the edge ClientApp's messages, data from the population.

It speaks exactly what :mod:`edge_client.flower_client` speaks (the keys of
:mod:`edgefleet.flower_keys`) and trains the same way — :meth:`edgefleet.runtime.PlanRuntime.fit`
in a TFLite interpreter, with the train config's epochs, learning rate, batch rule and
weighting, the order seeded by :func:`edgefleet.runtime.order_seed` — but its examples,
eligibility and drift come from the run's :class:`~simulation.population.Population` instead of
an agent's data directory:

* ``query``: eligible when the device's trace says it is available at the simulated time
  (``sim-time`` in the config, put there by :class:`simulation.sim_grid.SimGrid`);
  ``drift-packed`` is the summary (:mod:`edgefleet.drift.packed`) of ``traffic_rows`` inference
  inputs drawn from its current (maybe drifted) data;
* ``train``: declines when the device is not available at the simulated time (the server
  trains nodes it has not queried, as production over-selection does) or the trace drops it
  out this round; a Byzantine device (:mod:`simulation.adversaries`) poisons its labels or its
  update; a replay trains on the frozen orders. The reply carries the device's drift summary,
  as the edge ClientApp's does.

The device is the node's ``partition-id``; every reply carries it as ``sim-device``. No
TensorFlow is imported here (the engine keeps it out of the workers).
"""

from __future__ import annotations

import json
import sys
import threading
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgefleet import flower_keys as fk
from edgefleet.drift import DriftAccumulator
from edgefleet.drift.packed import pack
from edgefleet.errors import EdgeFleetError
from edgefleet.runtime import PlanRuntime, order_seed, reported_examples
from simulation.population import Population, load_population

SIM_TIME = "sim-time"
SIM_DEVICE = "sim-device"
TF_LOADED = "sim-tf-loaded"
_TRAIN_LOCK = threading.Lock()


def _train_lock() -> threading.Lock:
    """The worker's training lock (a module function, so Ray pickles the app by reference)."""
    return _TRAIN_LOCK


@lru_cache(maxsize=2)
def _runtime(plan_dir: str) -> PlanRuntime:
    return PlanRuntime.from_dir(plan_dir)


class _Drift:
    """Per worker: packed drift summaries by (device, drift state), built on first use."""

    def __init__(self) -> None:
        self.cache: dict[tuple[int, tuple[float, ...]], bytes] = {}

    def summary(self, pop: Population, rt: PlanRuntime, device: int, server_round: int
                ) -> bytes:
        ref = rt.manifest.reference
        if ref is None or not ref.features:
            return b""
        state = tuple(s.intensity(server_round) if s.affects(device) else 0.0
                      for s in pop.scenarios)
        key = (device, state)
        if key not in self.cache:
            x, _ = pop.client_data(device, server_round)
            rows = pop.exp.selection.traffic_rows
            rng = np.random.default_rng([pop.exp.seed, 6000, device, *[int(s * 1000)
                                                                        for s in state]])
            traffic = x[rng.integers(0, len(x), size=rows)]
            acc = DriftAccumulator(ref, model=rt.manifest.name, version=1)
            acc.update(traffic.reshape(rows, -1))
            self.cache[key] = pack(acc.to_summary())
        return self.cache[key]

    def entry(self, pop: Population, rt: PlanRuntime, device: int, server_round: int
              ) -> dict[str, bytes]:
        """The reply's drift entry (nothing without a reference)."""
        packed = self.summary(pop, rt, device, server_round)
        return {fk.DRIFT_PACKED: packed} if packed else {}


def _available(pop: Population, device: int, server_round: int, sim_time: float) -> bool:
    """Whether the device may train now: its trace, and in a replay its frozen orders."""
    return pop.traces.available(device, sim_time) and (
        not pop.orders or pop.order(server_round, device) is not None)


def _config(message: Message) -> ConfigRecord:
    records = list(message.content.config_records.values())
    return records[0] if records else ConfigRecord()


def _float(cfg: ConfigRecord, key: str, default: float) -> float:
    value = cfg.get(key, default)
    return float(value) if isinstance(value, int | float) else default


def _int(cfg: ConfigRecord, key: str, default: int) -> int:
    value = cfg.get(key, default)
    return int(value) if isinstance(value, int | float) else default


def _decline(message: Message, device: int, reason: str) -> Message:
    config = ConfigRecord({fk.STATUS: fk.STATUS_DECLINED, fk.REASON: reason, SIM_DEVICE: device})
    return Message(RecordDict({fk.METRICS: MetricRecord({fk.NUM_EXAMPLES: 0}),
                               fk.CONFIG: config}), reply_to=message)


def make_sim_client_app(run_dir: str, plan_dir: str) -> ClientApp:
    """The ClientApp of a run whose population is saved in ``run_dir``."""
    app = ClientApp()
    drift = _Drift()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        pop, rt = load_population(run_dir), _runtime(plan_dir)
        device = int(context.node_config["partition-id"])
        cfg = _config(message)
        r = _int(cfg, fk.SERVER_ROUND, 1)
        ok = _available(pop, device, r, _float(cfg, SIM_TIME, 0.0))
        _, y = pop.client_data(device, r)
        config = ConfigRecord({
            fk.ELIGIBLE: ok, fk.REASONS: json.dumps([] if ok else ["unavailable (trace)"]),
            **(drift.entry(pop, rt, device, r) if ok else {}),
            fk.MODEL: rt.manifest.name, fk.VERSION: 1, fk.PLAN_SHA256: rt.manifest.plan_sha256,
            SIM_DEVICE: device, TF_LOADED: "tensorflow" in sys.modules})
        return Message(RecordDict({fk.CONFIG: config,
                                   fk.METRICS: MetricRecord({fk.NUM_EXAMPLES: len(y)})}),
                       reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        pop, rt = load_population(run_dir), _runtime(plan_dir)
        device = int(context.node_config["partition-id"])
        cfg = _config(message)
        r = _int(cfg, fk.SERVER_ROUND, 1)
        if not _available(pop, device, r, _float(cfg, SIM_TIME, 0.0)):
            return _decline(message, device, "unavailable (trace)")
        if pop.traces.drops_out(device, r):
            return _decline(message, device, "dropped out during training (trace)")
        x, y = pop.client_data(device, r)
        y = pop.adversaries.labels(device, y, pop.n_classes)
        records = list(message.content.array_records.values())
        if not records:
            return _decline(message, device, "no weights in the train message")
        global_w = {k: a.numpy() for k, a in records[0].items()}
        seed = order_seed(_int(cfg, fk.SEED, fk.DEFAULT_SEED), r, device)
        try:
            with _train_lock():  # one runtime per worker process: one training at a time
                rt.set_weights(global_w)
                result = rt.fit(x, y, epochs=_int(cfg, fk.EPOCHS, fk.DEFAULT_EPOCHS),
                                lr=_float(cfg, fk.LR, 0.05), seed=seed,
                                batch_rule=str(cfg.get(fk.BATCH_RULE, fk.DEFAULT_BATCH_RULE)),
                                orders=pop.order(r, device))
                trained = rt.get_weights()
            n = reported_examples(result, len(y), str(cfg.get(fk.WEIGHTING,
                                                              fk.DEFAULT_WEIGHTING)))
        except EdgeFleetError as exc:
            return _decline(message, device, f"cannot train: {exc}")
        if result.steps == 0 or n == 0:
            return _decline(message, device, "nothing to train (fewer examples than a batch)")
        weights = pop.adversaries.poison(device, r, global_w, trained)
        first = result.epoch_losses[0] if result.epoch_losses else float(result.loss)
        metrics = MetricRecord({fk.NUM_EXAMPLES: n, fk.TRAIN_LOSS: float(result.loss),
                                fk.FIRST_EPOCH_LOSS: float(first), fk.STEPS: result.steps,
                                fk.EXAMPLES_TRAINED: result.examples_trained})
        config = ConfigRecord({fk.STATUS: fk.STATUS_OK, fk.MODEL: rt.manifest.name,
                               fk.VERSION: 1, fk.PLAN_SHA256: rt.manifest.plan_sha256,
                               SIM_DEVICE: device, **drift.entry(pop, rt, device, r)})
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})
        return Message(RecordDict({fk.ARRAYS: arrays, fk.METRICS: metrics, fk.CONFIG: config}),
                       reply_to=message)

    return app

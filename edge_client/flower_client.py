"""The Flower ClientApp: federated training of the device's active plan on its labelled store.

How it runs beside the agent
----------------------------
A Flower SuperNode runs on the device next to ``edgefleet agent run``; both are given the same
data directory (the agent by ``EDGEFLEET_AGENT_DATA_DIR``, the SuperNode by
``--node-config "data-dir='/var/lib/edgefleet'"``). The agent is the only writer of models and
labels; the ClientApp only reads them:

* ``models/active.json`` names the active version; its verified plan directory
  ``models/<model>/<version>/`` (plan, manifest, weights) is loaded read-only — the agent
  switches versions by atomic renames, so the ClientApp sees either the old or the new one;
* ``labels.sqlite3`` holds the labelled examples and ``state.sqlite3`` the cumulative drift
  summary per version; both are SQLite in WAL mode with a busy timeout, so the two processes
  read and write concurrently without corrupting anything.

The plan cannot travel in the Flower app bundle (``.tflite`` files are not allowed there); it
arrives the agent's way, from the registry. The global weights arrive in the ``train`` message.

Messages
--------
The names below are the constants of :mod:`edgefleet.flower_keys` (``num-examples`` is
``NUM_EXAMPLES`` and so on), which the ServerApp imports too.

``query``
    Replies ``ConfigRecord "config"``: ``eligible`` (bool), ``reasons`` (JSON list), ``model``,
    ``version``, ``plan-sha256``, ``drift-packed`` (the cumulative :class:`DriftSummary` as the
    bytes of :func:`edgefleet.drift.packed.pack`; absent when there is none), and
    ``MetricRecord "metrics"``: ``num-examples``.
``train``
    Takes ``ArrayRecord`` (the global weights, keyed by the manifest's weight names) and
    ``ConfigRecord "config"`` (``epochs`` default 1, ``lr`` default the run settings' ``lr``,
    ``seed`` default 0, ``batch-rule`` default ``wrap``, ``weighting`` default ``local-size``,
    optional ``plan-sha256`` that must be the local plan's). The example order is seeded by
    (``seed``, ``server-round``, node id), so no two devices share it
    (:func:`edgefleet.runtime.order_seed`). Replies ``ArrayRecord "arrays"`` (new weights),
    ``MetricRecord "metrics"`` (``num-examples`` — the local size, or with ``weighting =
    "examples-trained"`` the examples one epoch trained —, ``train-loss``, ``steps``,
    ``examples-trained``) and
    ``ConfigRecord "config"`` (``status`` ``"ok"`` or ``"stopped"``, ``drift-packed``, ``model``,
    ``version``). It *declines* — no arrays, ``num-examples`` 0, ``status`` ``"declined"`` and a
    ``reason`` — when the device is not eligible, has no active model or no labelled examples,
    or the weights do not fit its plan; the strategy must skip such replies. When conditions
    stop holding mid-training, training stops between steps: after at least one step the partial
    update is returned with ``status`` ``"stopped"``, before any step it declines.
``evaluate``
    Evaluates the given weights (or the active ones) on the labelled store: ``MetricRecord``
    ``num-examples``, ``eval-loss``, ``eval-acc`` (``num-examples`` 0 when there is nothing).

Node config keys: ``data-dir`` (default: the agent's default data dir) and ``eligibility``
(``"device"`` — the Linux probes and the policy from ``EDGEFLEET_AGENT_*`` settings; ``"always"``;
``"never"``). :func:`make_client_app` takes an ``eligibility`` factory for simulations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from edge_client.eligibility import (
    DeviceConditions,
    DeviceEligibility,
    EligibilityPolicy,
    EligibilityProvider,
    SimulatedEligibility,
    should_continue,
)
from edge_client.models import ModelManager
from edge_client.settings import AgentSettings
from edge_client.storage import StateStore
from edge_client.store import LabelStore
from edgefleet import flower_keys as fk
from edgefleet.drift import DriftSummary
from edgefleet.drift.packed import pack
from edgefleet.errors import EdgeFleetError, InputError, SummaryError
from edgefleet.run_settings import DEFAULTS
from edgefleet.runtime import PlanRuntime, order_seed, reported_examples

EligibilityFactory = Callable[[Context, AgentSettings], EligibilityProvider]


@dataclass
class _Node:
    """What one message needs from the shared data directory."""

    settings: AgentSettings
    runtime: PlanRuntime | None
    version: int | None
    error: str = "no active model on this device"
    model: str = ""  # the registry model of the active version (the plan's name may differ)

    @classmethod
    def open(cls, context: Context) -> _Node:
        data_dir = context.node_config.get(fk.DATA_DIR)
        settings = AgentSettings(data_dir=Path(str(data_dir))) if data_dir else AgentSettings()
        current, _ = ModelManager(settings.models_dir).read_pointer()
        if current is None:
            return cls(settings, None, None)
        path = settings.models_dir / current.model / str(current.version)
        try:
            runtime = PlanRuntime.from_dir(path, interpreter=settings.interpreter)
        except (EdgeFleetError, OSError) as exc:  # e.g. pruned by a concurrent switch
            return cls(settings, None, None, f"the active model does not load: {exc}")
        return cls(settings, runtime, current.version, model=current.model)

    def examples(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.runtime is not None
        m = self.runtime.manifest
        store = LabelStore(self.settings.labels_db, self.settings.label_store_max)
        try:
            x, y = store.load(m.name, m.input.sample_shape)
        finally:
            store.close()
        keep = (y >= 0) & (y < m.output.n_classes)
        return x[keep], y[keep]

    def drift_json(self) -> str:
        if self.runtime is None or self.version is None:
            return ""
        state = StateStore(self.settings.state_db)
        try:
            # the agent keeps it under the registry model name (see Telemetry.record_local)
            return state.load_drift(self.model or self.runtime.manifest.name, self.version) or ""
        finally:
            state.close()

    def drift(self) -> dict[str, ConfigRecordValues]:
        """The reply's drift entry: the stored summary, packed (nothing when there is none or
        it does not validate)."""
        raw = self.drift_json()
        if not raw:
            return {}
        try:
            return {fk.DRIFT_PACKED: pack(DriftSummary.parse(raw))}
        except SummaryError:
            return {}

    def identity(self) -> dict[str, ConfigRecordValues]:
        if self.runtime is None or self.version is None:
            return {fk.MODEL: "", fk.VERSION: -1, fk.PLAN_SHA256: ""}
        m = self.runtime.manifest
        return {fk.MODEL: m.name, fk.VERSION: self.version, fk.PLAN_SHA256: m.plan_sha256}


def default_eligibility(context: Context, settings: AgentSettings) -> EligibilityProvider:
    """``node_config["eligibility"]``: ``"device"`` (default), ``"always"`` or ``"never"``."""
    kind = str(context.node_config.get(fk.ELIGIBILITY, fk.ELIGIBILITY_DEVICE))
    if kind == fk.ELIGIBILITY_ALWAYS:
        return SimulatedEligibility(DeviceConditions())
    if kind == fk.ELIGIBILITY_NEVER:
        return SimulatedEligibility(DeviceConditions(load_per_core=float("inf")),
                                    EligibilityPolicy(max_load_per_core=1.0))
    return DeviceEligibility.from_settings(settings)


def _weights_from(message: Message) -> dict[str, np.ndarray] | None:
    records = list(message.content.array_records.values())
    if not records:
        return None
    return {name: array.numpy() for name, array in records[0].items()}


def _config(message: Message) -> ConfigRecord:
    records = list(message.content.config_records.values())
    return records[0] if records else ConfigRecord()


def _number(cfg: ConfigRecord, key: str, default: float) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError(f"config {key!r} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError as exc:
        raise InputError(f"config {key!r} must be a number, got {value!r}") from exc


def _decline(message: Message, reason: str, node: _Node | None = None) -> Message:
    config = ConfigRecord({fk.STATUS: fk.STATUS_DECLINED, fk.REASON: reason,
                           **(node.identity() if node else {})})
    metrics = MetricRecord({fk.NUM_EXAMPLES: 0})
    return Message(RecordDict({fk.METRICS: metrics, fk.CONFIG: config}), reply_to=message)


def make_client_app(eligibility: EligibilityFactory | None = None) -> ClientApp:
    """Build the ClientApp; ``eligibility(context, settings)`` picks the provider per message."""
    pick = eligibility or default_eligibility
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        node = _Node.open(context)
        verdict = pick(context, node.settings).check()
        n = len(node.examples()[1]) if node.runtime is not None else 0
        config = ConfigRecord({fk.ELIGIBLE: verdict.eligible,
                               fk.REASONS: json.dumps(verdict.reasons),
                               **node.drift(), **node.identity()})
        return Message(RecordDict({fk.CONFIG: config,
                                   fk.METRICS: MetricRecord({fk.NUM_EXAMPLES: n})}),
                       reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        node = _Node.open(context)
        provider = pick(context, node.settings)
        verdict = provider.check()
        if not verdict.eligible:
            return _decline(message, "not eligible: " + "; ".join(verdict.reasons), node)
        if node.runtime is None:
            return _decline(message, node.error)
        runtime = node.runtime
        cfg = _config(message)
        wanted = str(cfg.get(fk.PLAN_SHA256, "") or "")
        if wanted and wanted != runtime.manifest.plan_sha256:
            return _decline(message, "the global model's plan is not this device's plan", node)
        x, y = node.examples()
        if len(y) == 0:
            return _decline(message, "no labelled examples on this device", node)
        try:
            weights = _weights_from(message)
            if weights is not None:
                runtime.set_weights(weights)
            recheck = 1.0 if isinstance(provider, DeviceEligibility) else 0.0
            result = runtime.fit(
                x, y, epochs=int(_number(cfg, fk.EPOCHS, fk.DEFAULT_EPOCHS)),
                lr=_number(cfg, fk.LR, DEFAULTS.lr),
                seed=order_seed(int(_number(cfg, fk.SEED, fk.DEFAULT_SEED)),
                                int(_number(cfg, fk.SERVER_ROUND, 0)), int(context.node_id)),
                batch_rule=str(cfg.get(fk.BATCH_RULE, fk.DEFAULT_BATCH_RULE)),
                should_continue=should_continue(provider, min_interval_s=recheck))
            n_reported = reported_examples(result, len(y),
                                           str(cfg.get(fk.WEIGHTING, fk.DEFAULT_WEIGHTING)))
        except EdgeFleetError as exc:
            return _decline(message, f"cannot train: {exc}", node)
        if result.steps == 0:
            return _decline(message, "conditions stopped holding before the first step", node)
        loss = result.loss if result.epoch_losses else float("nan")
        metrics = MetricRecord({fk.NUM_EXAMPLES: n_reported, fk.TRAIN_LOSS: float(loss),
                                fk.STEPS: result.steps,
                                fk.EXAMPLES_TRAINED: result.examples_trained})
        if result.epoch_losses:  # the received model's loss on the first pass (drift steering)
            metrics[fk.FIRST_EPOCH_LOSS] = float(result.epoch_losses[0])
        config = ConfigRecord({fk.STATUS: fk.STATUS_STOPPED if result.stopped else fk.STATUS_OK,
                               **node.drift(), **node.identity()})
        arrays = ArrayRecord({k: Array(v) for k, v in runtime.get_weights().items()})
        return Message(RecordDict({fk.ARRAYS: arrays, fk.METRICS: metrics, fk.CONFIG: config}),
                       reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        node = _Node.open(context)
        if node.runtime is None:
            return _decline(message, node.error)
        x, y = node.examples()
        if len(y) == 0:
            return Message(RecordDict({fk.METRICS: MetricRecord({fk.NUM_EXAMPLES: 0})}),
                           reply_to=message)
        try:
            weights = _weights_from(message)
            if weights is not None:
                node.runtime.set_weights(weights)
            result = node.runtime.evaluate(x, y)
        except EdgeFleetError as exc:
            return _decline(message, f"cannot evaluate: {exc}", node)
        metrics = MetricRecord({fk.NUM_EXAMPLES: result.n, fk.EVAL_LOSS: result.loss,
                                fk.EVAL_ACC: result.accuracy})
        return Message(RecordDict({fk.METRICS: metrics,
                                   fk.CONFIG: ConfigRecord(node.identity())}), reply_to=message)

    return app


#: The ClientApp a SuperNode loads: ``edge_client.flower_client:app``.
app = make_client_app()

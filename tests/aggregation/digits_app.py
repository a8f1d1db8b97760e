"""A digits ClientApp for in-process federation tests: it trains the real plan in TFLite.

It speaks the message shapes of ``edge_client.flower_client`` (query: ``config`` + ``metrics``;
train: ``arrays`` + ``metrics`` + ``config``) but keeps each node's data in memory: node
``partition-id`` holds a share of the digits training set, and its drift summary is computed from
that share with :class:`~edgefleet.drift.DriftAccumulator` (packed, in query and train replies).
Behaviours per partition: ``honest``, ``nan`` (sends NaN weights), ``ineligible`` (declines to
train, as the edge ClientApp does).
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgefleet import flower_keys as fk
from edgefleet.drift import DriftAccumulator
from edgefleet.drift.packed import pack
from edgefleet.plan import PlanManifest
from edgefleet.runtime import PlanRuntime


def digits_client_app(plan: bytes, manifest: PlanManifest, x: np.ndarray, y: np.ndarray,
                      behaviours: list[str]) -> ClientApp:
    """Node ``i`` gets every ``len(behaviours)``-th training row starting at ``i``."""
    shares = [(x[i :: len(behaviours)], y[i :: len(behaviours)]) for i in range(len(behaviours))]
    drift = []
    for xs, _ in shares:
        acc = DriftAccumulator(manifest.reference, model=manifest.name, version=1)  # type: ignore[arg-type]
        acc.update(xs)
        drift.append(pack(acc.to_summary()))
    app = ClientApp()

    def node(context: Context) -> int:
        return int(context.node_config["partition-id"])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        i = node(context)
        eligible = behaviours[i] != "ineligible"
        config = ConfigRecord({"eligible": eligible, fk.DRIFT_PACKED: drift[i],
                               "reasons": json.dumps([] if eligible else ["on battery"]),
                               "plan-sha256": manifest.plan_sha256})
        return Message(RecordDict({"config": config, "metrics": MetricRecord(
            {"num-examples": len(shares[i][1])})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        i = node(context)
        if behaviours[i] == "ineligible":
            return Message(RecordDict({
                "metrics": MetricRecord({"num-examples": 0}),
                "config": ConfigRecord({"status": "declined", "reason": "on battery"}),
            }), reply_to=msg)
        cfg = msg.content.config_records["config"]
        runtime = PlanRuntime.from_bytes(plan, manifest, {
            k: a.numpy() for k, a in msg.content.array_records["arrays"].items()})
        xs, ys = shares[i]
        epochs, lr, seed = cfg["epochs"], cfg["lr"], cfg["seed"]
        assert isinstance(epochs, int) and isinstance(lr, float) and isinstance(seed, int)
        fit = runtime.fit(xs, ys, epochs=epochs, lr=lr, seed=seed)
        weights = runtime.get_weights()
        if behaviours[i] == "nan":
            first = next(iter(weights))
            weights[first] = np.full_like(weights[first], np.nan)
        return Message(RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
            "metrics": MetricRecord({"num-examples": len(ys), "train-loss": fit.loss,
                                     "steps": fit.steps}),
            "config": ConfigRecord({"status": "ok", fk.DRIFT_PACKED: drift[i]}),
        }), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        i = node(context)
        runtime = PlanRuntime.from_bytes(plan, manifest, {
            k: a.numpy() for k, a in msg.content.array_records["arrays"].items()})
        result = runtime.evaluate(*shares[i])
        return Message(RecordDict({"metrics": MetricRecord({
            "num-examples": result.n, "eval-acc": result.accuracy, "eval-loss": result.loss})}),
            reply_to=msg)

    return app

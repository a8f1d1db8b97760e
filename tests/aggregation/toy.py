"""A toy federation for the round-loop tests: a tiny weight spec and a scripted ClientApp.

Each virtual node's behaviour is chosen by its ``partition-id`` from a list given to
:func:`toy_client_app`. Honest nodes move the global weights half-way to ``partition-id + 1``
and report ``10 * (partition-id + 1)`` examples, so the expected aggregate is easy to compute.
"""

from __future__ import annotations

import json
import time

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

from edgefleet.plan import InputSpec, OutputSpec, PlanManifest, WeightSpec

SPEC = [WeightSpec(name="dense/kernel", shape=[4, 3]), WeightSpec(name="dense/bias", shape=[3])]
SLOW_S = 2.5


def toy_manifest() -> PlanManifest:
    return PlanManifest(
        name="toy", architecture={"kind": "linear"},
        input=InputSpec(shape=[None, 4], feature_names=["a", "b", "c", "d"]),
        output=OutputSpec(class_labels=["x", "y", "z"]), weights=SPEC, train_batch_size=8,
        plan_sha256="0" * 64, plan_size=1, built_with={},
    )


def zeros() -> dict[str, np.ndarray]:
    return {w.name: np.zeros(w.shape, np.float32) for w in SPEC}


def examples(pid: int) -> int:
    return 10 * (pid + 1)


def honest_update(weights: dict[str, np.ndarray], pid: int) -> dict[str, np.ndarray]:
    return {k: (v + 0.5 * (pid + 1 - v)).astype(np.float32) for k, v in weights.items()}


def toy_client_app(behaviours: list[str], drift_scores: list[float] | None = None) -> ClientApp:
    """Behaviours: honest, nan, huge, shape, dtype, names, liar (num-examples), slow, error,
    ineligible, otherplan, decline, mute (answers train too late).

    Message shapes are those of ``edge_client.flower_client``.
    """
    app = ClientApp()

    def kind(context: Context) -> tuple[int, str]:
        pid = int(context.node_config["partition-id"])
        return pid, behaviours[pid]

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid, b = kind(context)
        cfg: dict[str, ConfigRecordValues] = {
            "eligible": b != "ineligible", "drift": "", "model": "toy", "version": 1,
            "plan-sha256": "1" * 64 if b == "otherplan" else "0" * 64,
            "reasons": json.dumps(["on battery"] if b == "ineligible" else []),
        }
        if drift_scores is not None:
            cfg["drift-score"] = drift_scores[pid]
        content = RecordDict({"config": ConfigRecord(cfg),
                              "metrics": MetricRecord({"num-examples": examples(pid)})})
        return Message(content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid, b = kind(context)
        if b == "error":
            raise RuntimeError("device crashed")
        why = {"decline": "unplugged", "ineligible": "not eligible: on battery",
               "otherplan": "the global model's plan is not this device's plan"}.get(b)
        if why is not None:  # as the edge ClientApp declines a train message
            content = RecordDict({"metrics": MetricRecord({"num-examples": 0}),
                                  "config": ConfigRecord({"status": "declined",
                                                          "reason": why})})
            return Message(content, reply_to=msg)
        if b == "slow":
            time.sleep(SLOW_S)
        if b == "mute":
            time.sleep(SLOW_S)
        arrays = msg.content.array_records["arrays"]
        config = msg.content.config_records["config"]
        weights = {k: a.numpy() for k, a in arrays.items()}
        new = honest_update(weights, pid)
        n = examples(pid)
        if b == "nan":
            new["dense/kernel"][0, 0] = np.nan
        elif b == "huge":
            new = {k: v + np.float32(1e4) for k, v in new.items()}
        elif b == "shape":
            new["dense/bias"] = np.zeros(5, np.float32)
        elif b == "dtype":
            new["dense/bias"] = new["dense/bias"].astype(np.float64)
        elif b == "names":
            new["extra"] = np.zeros(1, np.float32)
        elif b == "liar":
            n = 10**9
        metrics = MetricRecord({"num-examples": n, "loss": 1.0 / (pid + 1),
                                "epochs": int(str(config["epochs"]))})
        reply = RecordDict({
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in new.items()}),
            "metrics": metrics,
            "config": ConfigRecord({"status": "ok", "round": int(str(config["server-round"]))}),
        })
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid, _ = kind(context)
        bias = float(msg.content.array_records["arrays"]["dense/bias"].numpy().mean())
        metrics = MetricRecord({"num-examples": examples(pid), "eval-acc": 0.5, "bias": bias})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app

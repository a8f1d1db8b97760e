"""A ClientApp for one adversarial SuperNode beside the real agents (test code only).

It runs the edge agent's real ClientApp (``edge_client.flower_client``) on the data dir of its
node config, then corrupts the weights of its train reply, a different way each round: round 1
wrong shapes, round 2 an oversized update (x1e6), round 3 NaN. Nodes without a ``hostile``
node-config key are passed through untouched.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from edge_client.flower_client import app as agent_app

ATTACKS = ("shape", "norm", "nan")

app = ClientApp()


def _corrupt(reply: Message, server_round: int) -> Message:
    records = reply.content.array_records
    if not records:  # the node declined: nothing to corrupt
        return reply
    name = next(iter(records))
    weights = {k: a.numpy() for k, a in records[name].items()}
    attack = ATTACKS[(server_round - 1) % len(ATTACKS)]
    first = next(iter(weights))
    if attack == "shape":
        weights[first] = np.zeros((weights[first].shape[0] + 1, *weights[first].shape[1:]),
                                  dtype=weights[first].dtype)
    elif attack == "norm":
        weights = {k: (v * 1e6).astype(v.dtype) for k, v in weights.items()}
    else:
        weights[first] = np.full_like(weights[first], np.nan)
    reply.content.array_records[name] = ArrayRecord({k: Array(v) for k, v in weights.items()})
    return reply


@app.query()
def query(message: Message, context: Context) -> Message:
    return agent_app(message, context)


@app.train()
def train(message: Message, context: Context) -> Message:
    reply = agent_app(message, context)
    if "hostile" not in context.node_config:
        return reply
    config = message.content.config_records.get("config")
    server_round = int(config.get("server-round", 1)) if config is not None else 1  # type: ignore[arg-type]
    return _corrupt(reply, server_round)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return agent_app(message, context)

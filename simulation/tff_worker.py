"""The TensorFlow Federated side of ``--backend tff``: run in the TFF virtual environment only.

Standalone on purpose (numpy, TensorFlow 2.14 and TFF 0.87 only; nothing of this project, whose
pydantic and Flower cannot be installed beside TFF). Usage::

    var/tff-venv/bin/python simulation/tff_worker.py JOB.json

``JOB.json`` names ``frozen`` (the frozen-inputs NPZ of :mod:`simulation.replay`), ``data``
(an NPZ with ``x_train``, ``y_train``), ``out`` (the NPZ written: ``round/<r>/<weight name>``),
and the model: ``hidden`` layer sizes, ``n_features``, ``n_classes``, ``shift``, ``scale``
(affine preprocessing), ``weight_names`` (the plan's, in order), ``batch_size``, ``lr``,
``rounds``. Each round every client with an order trains through
``tff.learning.algorithms.build_weighted_fed_avg`` (plain SGD on the client, server SGD with
learning rate 1.0, ``ClientWeighting.NUM_EXAMPLES``) on ``tf.data`` batches of ``batch_size`` with
``drop_remainder=True`` over its frozen order, epoch after epoch.
"""

import json
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff


def _model(job):
    shift = np.asarray(job["shift"], np.float32)
    scale = np.asarray(job["scale"], np.float32)
    inputs = tf.keras.Input(shape=(job["n_features"],), dtype=tf.float32)
    h = tf.keras.layers.Lambda(lambda x: (x - shift) * scale)(inputs)
    for size in job["hidden"]:
        h = tf.keras.layers.Dense(size, activation="relu")(h)
    out = tf.keras.layers.Dense(job["n_classes"])(h)
    return tf.keras.Model(inputs, out)


def main(path):
    with open(path) as fh:
        job = json.load(fh)
    frozen = np.load(job["frozen"])
    data = np.load(job["data"])
    x, y = data["x_train"].astype(np.float32), data["y_train"].astype(np.int32)
    names = job["weight_names"]
    clients = sorted(int(k.split("/")[1]) for k in frozen.files if k.startswith("partition/"))
    parts = {c: frozen[f"partition/{c}"] for c in clients}
    b = job["batch_size"]
    spec = (tf.TensorSpec([None, job["n_features"]], tf.float32), tf.TensorSpec([None], tf.int32))

    def model_fn():
        return tff.learning.models.from_keras_model(
            _model(job), input_spec=spec,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(job["lr"]),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0))
    state = process.initialize()
    initial = [frozen[f"weights/{n}"].astype(np.float32) for n in names]
    state = process.set_model_weights(
        state, tff.learning.models.ModelWeights(trainable=initial, non_trainable=[]))
    out: dict[str, Any] = {}  # Any: numpy 2's savez stub would match these against allow_pickle
    for r in range(1, job["rounds"] + 1):
        datasets = []
        for c in clients:
            key = f"order/{r}/{c}"
            if key not in frozen.files:
                continue
            order = frozen[key]
            order = order[None] if order.ndim == 1 else order
            ds = None
            for epoch in order:
                idx = parts[c][epoch]
                part = tf.data.Dataset.from_tensor_slices((x[idx], y[idx])).batch(
                    b, drop_remainder=True)
                ds = part if ds is None else ds.concatenate(part)
            datasets.append(ds)
        state = process.next(state, datasets).state
        weights = process.get_model_weights(state).trainable
        for n, w in zip(names, weights, strict=True):
            out[f"round/{r}/{n}"] = np.asarray(w)
        print(f"round {r} done", flush=True)
    np.savez(job["out"], **out)


if __name__ == "__main__":
    main(sys.argv[1])

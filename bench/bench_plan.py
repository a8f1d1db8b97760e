"""Benchmark: a digits MLP plan in the TFLite runtimes versus the same model in TensorFlow/Keras.

Prints, in one run, a side-by-side table of

* single-sample ``infer`` latency (median µs per call) and batched ``infer`` throughput
  (samples/s, batch 256 by default);
* ``train`` steps per second (one SGD step on a batch of 32);

for each of

* ``PlanRuntime`` on ``ai-edge-litert`` and on ``tflite-runtime`` (the public API, including its
  input validation: what the edge agent and the server actually call);
* TensorFlow/Keras with the same architecture and weights: eager ``model(x)``, a
  ``tf.function``-compiled ``model(x)``, and ``model.predict_on_batch(x)``; for training, an eager
  ``GradientTape`` step and the same step compiled with ``tf.function``.

Ratios are relative to ``PlanRuntime`` on ai-edge-litert (``> 1`` means slower than it for
latency, faster than it for throughput).

Run: ``.venv/bin/python bench/bench_plan.py [--hidden 64] [--batch 256] [--seconds 0.5]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# tflite-runtime must be loaded before TensorFlow in one process (see edgefleet.interpreters).
with contextlib.suppress(ImportError):
    import tflite_runtime.interpreter  # noqa: F401

import numpy as np
from _common import Column, build_digits_plan, print_table, timeit


def keras_model(weights: dict[str, np.ndarray], n_layers: int, n_features: int) -> Any:
    """The plan's architecture as a Keras model (x/16 rescaling, ReLU layers, softmax)."""
    import tensorflow as tf

    inputs = tf.keras.Input((n_features,))
    h = tf.keras.layers.Rescaling(1 / 16)(inputs)
    dense = []
    for i in range(n_layers):
        last = i == n_layers - 1
        layer = tf.keras.layers.Dense(weights[f"dense_{i}_bias"].shape[0],
                                      activation=None if last else "relu")
        h = layer(h)
        dense.append(layer)
    model = tf.keras.Model(inputs, tf.keras.layers.Softmax()(h))
    for i, layer in enumerate(dense):
        layer.set_weights([weights[f"dense_{i}_kernel"], weights[f"dense_{i}_bias"]])
    return model


def keras_train_steps(model: Any, lr: float) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(eager step, tf.function step): SGD on sparse cross-entropy, like the plan's ``train``."""
    import tensorflow as tf

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()

    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        for var, g in zip(model.trainable_variables, grads, strict=True):
            var.assign_sub(lr * g)
        return loss

    return step, tf.function(step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="64", help="hidden layer sizes, e.g. 64 or 128,64")
    parser.add_argument("--batch", type=int, default=256, help="batch size of batched infer")
    parser.add_argument("--seconds", type=float, default=0.5, help="time budget per measurement")
    args = parser.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)

    import tensorflow as tf

    from edgefleet.datasets import load_dataset
    from edgefleet.interpreters import available_interpreters
    from edgefleet.plan import PlanManifest
    from edgefleet.runtime import PlanRuntime

    ds = load_dataset("digits")
    x1 = ds.x_test[:1]
    xb = np.resize(ds.x_test, (args.batch, ds.n_features)).astype(np.float32)
    lr = 0.05

    with tempfile.TemporaryDirectory() as tmp:
        plan_dir = build_digits_plan(Path(tmp) / "plan", hidden)
        manifest = PlanManifest.load(plan_dir / "manifest.json")
        b = manifest.train_batch_size
        xt, yt = ds.x_train[:b], ds.y_train[:b]
        rows: list[tuple[str, float, float, float | None]] = []
        weights = None
        for name in available_interpreters():
            rt = PlanRuntime.from_dir(plan_dir, interpreter=name)
            weights = rt.get_weights()
            single = timeit(partial(rt.predict, x1), args.seconds)
            batched = timeit(partial(rt.predict, xb), args.seconds)
            steps = timeit(partial(rt.train_step, xt, yt, lr), args.seconds)
            rows.append((f"TFLite PlanRuntime [{name}]", single, batched, steps))
    assert weights is not None, "no TFLite interpreter installed"

    model = keras_model(weights, len(hidden) + 1, ds.n_features)
    compiled = tf.function(lambda x: model(x, training=False))
    x1_t, xb_t = tf.constant(x1), tf.constant(xb)
    eager_step, compiled_step = keras_train_steps(model, lr)
    xt_t, yt_t = tf.constant(xt), tf.constant(yt)
    rows.append(("TF/Keras eager model(x)", timeit(lambda: model(x1_t), args.seconds),
                 timeit(lambda: model(xb_t), args.seconds),
                 timeit(lambda: eager_step(xt_t, yt_t), args.seconds)))
    rows.append(("TF/Keras tf.function(model)", timeit(lambda: compiled(x1_t), args.seconds),
                 timeit(lambda: compiled(xb_t), args.seconds),
                 timeit(lambda: compiled_step(xt_t, yt_t), args.seconds)))
    rows.append(("TF/Keras predict_on_batch",
                 timeit(lambda: model.predict_on_batch(x1), args.seconds),
                 timeit(lambda: model.predict_on_batch(xb), args.seconds), None))

    print(f"digits MLP 64 → {' → '.join(map(str, hidden))} → 10 "
          f"({manifest.n_parameters:,} parameters, plan {manifest.plan_size:,} bytes); "
          f"TF {tf.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    print("ratios (×) are against the first row: latency ratio > 1 = slower, "
          "throughput ratio < 1 = slower")
    base_single, base_batched, base_train = rows[0][1], rows[0][2], rows[0][3] or 1.0
    columns = [
        Column("path", 34),
        Column("infer 1 (µs)", 12, ".1f"),
        Column("×", 6, ".2f"),
        Column(f"infer {args.batch} (samples/s)", 24, ",.0f"),
        Column("×", 6, ".2f"),
        Column("train steps/s", 14, ",.0f"),
        Column("×", 6, ".2f"),
    ]
    print_table(
        columns,
        (
            (
                label,
                single * 1e6,
                single / base_single,
                args.batch / batched,
                base_batched / batched,
                1 / step_s if step_s else None,
                base_train / step_s if step_s else "",
            )
            for label, single, batched, step_s in rows
        ),
    )


if __name__ == "__main__":
    main()

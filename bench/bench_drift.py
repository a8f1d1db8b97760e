"""Benchmark: the cost of updating a drift summary next to the cost of one ``infer``, in one run.

Builds the digits MLP plan (64 → 64 ReLU → 10; the TensorFlow conversion runs in a child
process, so this process loads only the TFLite interpreter), loads it with
``edgefleet.runtime.PlanRuntime`` and times, on the digits test split:

* ``infer`` of one sample, and of a batch (per sample);
* ``DriftAccumulator.update`` with one row (features + probabilities), ``observe`` of one row
  (buffered, applied 64 rows at a time: the amortised per-row cost), ``update`` of a batch
  (per row), with and without probabilities;
* for context: ``to_summary`` (the snapshot a telemetry window sends), its JSON size, a merge of
  two summaries and the server's ``compute_drift``.

Times are medians of repeated calls (µs); the ratio column divides by one single-sample infer.

Run: ``.venv/bin/python bench/bench_drift.py [--plan-dir DIR] [--batch 256] [--seconds 0.5]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import Column, plan_dir_or_build, print_table, timeit


def run(plan_dir: Path, batch: int, seconds: float) -> None:
    from edgefleet.datasets import load_dataset
    from edgefleet.drift import DriftAccumulator
    from edgefleet.runtime import PlanRuntime
    from server.drift import compute_drift

    runtime = PlanRuntime.from_dir(plan_dir)
    manifest = runtime.manifest
    if manifest.reference is None:
        sys.exit("the plan's manifest has no drift reference")
    ref = manifest.reference
    x = load_dataset("digits").x_test
    xb = np.resize(x, (batch, x.shape[1])).astype(np.float32)
    probs = runtime.predict(xb)
    one, p1 = xb[:1], probs[:1]
    acc = DriftAccumulator(ref, model=manifest.name, version=1)
    rows: list[tuple[str, float]] = []

    rows.append(("infer, 1 sample", timeit(lambda: runtime.predict(one), seconds)))
    rows.append(
        (f"infer, batch {batch} (per sample)", timeit(lambda: runtime.predict(xb), seconds) / batch)
    )
    rows.append(
        ("summary update, 1 row (features + probs)", timeit(lambda: acc.update(one, p1), seconds))
    )
    i = [0]

    def observe() -> None:
        k = i[0] = (i[0] + 1) % batch
        acc.observe(xb[k], probs[k])

    rows.append(("summary observe, 1 row (buffered by 64)", timeit(observe, seconds, 2000)))
    rows.append(
        (
            f"summary update, batch {batch} (per row)",
            timeit(lambda: acc.update(xb, probs), seconds) / batch,
        )
    )
    rows.append(
        (
            f"summary update, batch {batch}, features only (per row)",
            timeit(lambda: acc.update(xb), seconds) / batch,
        )
    )
    infer_one = rows[0][1]

    print(
        f"digits MLP plan, {ref.n_features} features, {ref.n_classes} classes, "
        f"interpreter {runtime.interpreter_name}, numpy {np.__version__}"
    )
    print_table(
        [Column("operation", 52), Column("µs", 9, ".2f"), Column("× one infer", 13, ".2f")],
        [(name, sec * 1e6, sec / infer_one) for name, sec in rows],
    )

    summary = acc.to_summary()
    other = DriftAccumulator(ref, model=manifest.name, version=1)
    other.update(xb, probs)
    theirs = other.to_summary()
    extra = [
        ("to_summary (one telemetry window)", timeit(acc.to_summary, seconds)),
        ("merge two summaries", timeit(lambda: summary.merge(theirs), seconds)),
        (
            "server compute_drift (64 features)",
            timeit(lambda: compute_drift(summary, ref), seconds),
        ),
    ]
    print()
    print_table(
        [Column("per window", 52), Column("µs", 9, ".1f")],
        [
            *((name, sec * 1e6) for name, sec in extra),
            ("summary JSON size (bytes)", f"{len(summary.model_dump_json()):,}"),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan-dir", type=Path, help="an existing digits plan directory")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=0.5, help="time budget per row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        run(plan_dir_or_build(args.plan_dir, Path(tmp)), args.batch, args.seconds)


if __name__ == "__main__":
    main()

"""Poisoning experiments on digits: 10 clients of unequal size, attackers among them.

:func:`attack_client_app` is a digits ClientApp (the message shapes of
``edge_client.flower_client``) in which node ``partition-id`` holds share ``i`` of the training
set (sizes from :func:`share_sizes`, smallest first) and behaves as ``behaviours[i]``:

``honest``   trains its share and reports its size;
``inflate``  trains honestly but declares ``INFLATED`` examples, in its query *and* its reply;
``flip1``    sends ``w_global - delta`` (its honest update with the sign flipped);
``flip10``   sends ``w_global - 10 * delta``;
``noise``    sends ``w_global + n`` with ``n`` Gaussian of the same norm as its honest update;
``absent``   is never eligible and declines to train (the run *without* that client).

:func:`run_experiment` runs ``rounds`` rounds on Flower's in-process grid (:mod:`harness`) with
the round loop's DEFAULT settings (only the round size is set) and returns the holdout accuracy
after each round. ``python -m tests.aggregation.attacks [--rounds N]`` prints the table of the
README's "Poisoned updates" section (2 attackers of 10, each strategy beside FedAvg); ``--help``
says so and runs nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from aggregation.rounds import RoundRunner, RoundSettings
from aggregation.selection import make_policy
from aggregation.selection.quarantine import Quarantine
from aggregation.strategies import build_strategy
from aggregation.validation_types import ValidationBounds
from edgefleet.datasets import Dataset
from edgefleet.plan import PlanManifest
from edgefleet.runtime import PlanRuntime
from tests.aggregation.harness import federation

INFLATED = 100_000
CLIENTS = 10
BEHAVIOURS = ("honest", "inflate", "flip1", "flip10", "noise", "absent")


def share_sizes(n_train: int, clients: int = CLIENTS) -> list[int]:
    """Unequal shares, smallest first: sizes grow linearly, the largest about 10x the smallest."""
    raw = np.linspace(1.0, 10.0, clients)
    sizes = np.floor(raw / raw.sum() * n_train).astype(int)
    return [int(s) for s in sizes]


def shares(x: np.ndarray, y: np.ndarray, clients: int = CLIENTS, seed: int = 0
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    order = np.random.default_rng(seed).permutation(len(y))
    bounds = np.cumsum([0, *share_sizes(len(y), clients)])
    return [(x[order[a:b]], y[order[a:b]]) for a, b in itertools.pairwise(bounds)]


def attack_client_app(plan: bytes, manifest: PlanManifest, data: Dataset,
                      behaviours: Sequence[str]) -> ClientApp:
    parts = shares(data.x_train, data.y_train, len(behaviours))
    app = ClientApp()

    def node(context: Context) -> tuple[int, str]:
        i = int(context.node_config["partition-id"])
        return i, behaviours[i]

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        i, b = node(context)
        n = INFLATED if b == "inflate" else len(parts[i][1])
        # an absent client is not there at all: never eligible, so never selected
        config = ConfigRecord({"eligible": b != "absent", "drift": "",
                               "reasons": json.dumps(["absent"] if b == "absent" else []),
                               "plan-sha256": manifest.plan_sha256})
        return Message(RecordDict({"config": config,
                                   "metrics": MetricRecord({"num-examples": n})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        i, b = node(context)
        if b == "absent":
            return Message(RecordDict({
                "metrics": MetricRecord({"num-examples": 0}),
                "config": ConfigRecord({"status": "declined", "reason": "absent"})}),
                reply_to=msg)
        cfg = msg.content.config_records["config"]
        g = {k: a.numpy() for k, a in msg.content.array_records["arrays"].items()}
        runtime = PlanRuntime.from_bytes(plan, manifest, g)
        xs, ys = parts[i]
        epochs, lr, seed = cfg["epochs"], cfg["lr"], cfg["seed"]
        assert isinstance(epochs, int) and isinstance(lr, float) and isinstance(seed, int)
        fit = runtime.fit(xs, ys, epochs=epochs, lr=lr, seed=seed)
        weights = _poison(b, g, runtime.get_weights(), seed + 1000 * i)
        n = INFLATED if b == "inflate" else len(ys)
        return Message(RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
            "metrics": MetricRecord({"num-examples": n, "train-loss": fit.loss}),
            "config": ConfigRecord({"status": "ok"}),
        }), reply_to=msg)

    return app


def _poison(behaviour: str, g: dict[str, np.ndarray], w: dict[str, np.ndarray], seed: int
            ) -> dict[str, np.ndarray]:
    delta = {k: w[k] - g[k] for k in g}
    if behaviour == "flip1":
        return {k: (g[k] - delta[k]).astype(g[k].dtype) for k in g}
    if behaviour == "flip10":
        return {k: (g[k] - 10 * delta[k]).astype(g[k].dtype) for k in g}
    if behaviour == "noise":
        rng = np.random.default_rng(seed)
        norm = np.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in delta.values()))
        noise = {k: rng.standard_normal(g[k].shape) for k in g}
        scale = norm / np.sqrt(sum(float((n**2).sum()) for n in noise.values()))
        return {k: (g[k] + scale * noise[k]).astype(g[k].dtype) for k in g}
    return w


@dataclass
class Outcome:
    """Holdout accuracy after each round, and what validation refused."""

    accuracy: list[float]
    refused: int
    quarantined: list[int]

    @property
    def final(self) -> float:
        return self.accuracy[-1]


def run_experiment(plan: bytes, manifest: PlanManifest, initial: dict[str, np.ndarray],
                   data: Dataset, behaviours: Sequence[str], *, strategy: str = "fedavg",
                   params: dict[str, object] | None = None, rounds: int = 10,
                   bounds: ValidationBounds | None = None) -> Outcome:
    """``rounds`` rounds under the default settings; see the module notes."""
    holdout = PlanRuntime.from_bytes(plan, manifest, initial)

    def evaluate(_: int, weights: object) -> dict[str, float]:
        holdout.set_weights(weights)  # type: ignore[arg-type]
        return {"accuracy": holdout.evaluate(data.x_test, data.y_test).accuracy}

    present = sum(b != "absent" for b in behaviours)
    policy = Quarantine(make_policy("uniform"))
    settings = RoundSettings(model=manifest.name, target_clients=present,
                             min_reports=min(3, present), over_selection=1.0,
                             min_nodes=len(behaviours), poll_interval_s=0.02,
                             query_timeout_s=30.0, train_timeout_s=60.0)
    app = attack_client_app(plan, manifest, data, behaviours)
    with federation(app, len(behaviours)) as (grid, _):
        runner = RoundRunner(grid, manifest, build_strategy(strategy, params), policy,
                             settings=settings, evaluate_fn=evaluate, bounds=bounds)
        result = runner.run(initial, num_rounds=rounds)
    accuracy = [r.metrics.get("holdout.accuracy", float("nan")) for r in result.reports]
    refused = sum(len(r.refused) for r in result.reports)
    return Outcome(accuracy, refused, sorted(policy.quarantined))


#: The README table: strategy name and its parameters for 2 attackers of 10.
ROBUST: list[tuple[str, dict[str, object]]] = [
    ("fedavg", {}), ("fedtrimmedavg", {"beta": 0.2}), ("fedmedian", {}),
    ("krum", {"num_malicious_nodes": 2}),
    ("multikrum", {"num_malicious_nodes": 2, "num_nodes_to_select": 5}),
    ("bulyan", {"num_malicious_nodes": 1})]


#: The round-level defences switched off (the strategies' own robustness alone).
NO_DEFENCES = ValidationBounds(min_cosine=None, max_weight_ratio=None, implausible_ratio=None)


def two_attacker_table(plan: bytes, manifest: PlanManifest, initial: dict[str, np.ndarray],
                       data: Dataset, rounds: int = 10, bounds: ValidationBounds | None = None
                       ) -> list[str]:
    """Markdown rows: round-``rounds`` accuracy per strategy and attack (2 of 10 attacking:
    the smallest and the largest client)."""
    attacks = ["none", "inflate", "flip1", "flip10", "noise"]
    rows = ["| strategy | " + " | ".join(attacks) + " |",
            "|---|" + "---|" * len(attacks)]
    for name, params in ROBUST:
        cells = []
        for attack in attacks:
            behaviours = ["honest"] * CLIENTS
            if attack != "none":  # the smallest and the largest client attack
                behaviours[0] = behaviours[-1] = attack
            out = run_experiment(plan, manifest, initial, data, behaviours, strategy=name,
                                 params=dict(params), rounds=rounds, bounds=bounds)
            cells.append(f"{out.final:.3f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m tests.aggregation.attacks`` (``--help`` describes it)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.aggregation.attacks",
        description="Print the README's 'Poisoned updates' tables: the holdout accuracy after "
                    "the last round of each strategy against each attack, 2 attackers of "
                    f"{CLIENTS} digits clients, under the round loop's default settings and "
                    "with its round-level defences off (about 18 minutes).")
    parser.add_argument("--rounds", type=int, default=10,
                        help="federated rounds of each experiment (default 10)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - the README's figures
    import tempfile
    from pathlib import Path

    from edgefleet.datasets import load_dataset
    from tests.conftest import build_plan_in_subprocess

    args = parse_args(argv)
    data = load_dataset("digits", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        build_plan_in_subprocess(Path(tmp))
        manifest = PlanManifest.load(Path(tmp) / "manifest.json")
        plan = (Path(tmp) / "plan.tflite").read_bytes()
    initial = PlanRuntime.from_bytes(plan, manifest).get_weights()
    t = time.monotonic()
    for title, bounds in (("default settings", None), ("round-level defences off", NO_DEFENCES)):
        print(f"\n{title}:\n", flush=True)
        for row in two_attacker_table(plan, manifest, initial, data, rounds=args.rounds,
                                      bounds=bounds):
            print(row, flush=True)
    print(f"({time.monotonic() - t:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()

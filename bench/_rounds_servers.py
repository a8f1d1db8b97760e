"""The two ServerApps ``bench_rounds_sim.py`` measures, each timed round by round.

:func:`run_ours` drives :class:`aggregation.rounds.RoundRunner` (drift steering on) and
:func:`run_fedavg` Flower's ``FedAvg.start()``, on the same grid, the same model
(:data:`SHAPES`, :func:`manifest`) and the same ClientApp (``_rounds_client.py``). Each appends one
row per round: thread CPU (``cpu``), the CPU after the replies are in (``settle``), wall time,
the CPU inside the grid's calls (``grid``, measured by :class:`GridMeter`), the number of pulls
and of stale-node queries.

It imports numpy, flwr and the project's packages at its top: ``bench_rounds_sim.py`` imports it
in the child process only, after ``_common`` has put the repository root on ``sys.path``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg

from aggregation.rounds import RoundRunner, RoundSettings
from aggregation.selection import make_policy
from aggregation.strategies import build_strategy
from edgefleet.drift import ReferenceProfile
from edgefleet.plan import InputSpec, OutputSpec, PlanManifest, WeightSpec

SHAPES = {"dense/kernel": (64, 64), "dense/bias": (64,), "out/kernel": (64, 10),
          "out/bias": (10,)}


class GridMeter:
    """Thread CPU spent inside the grid's calls (pushing into and pulling from the LinkState).

    The grid instance's methods are replaced by timed ones, so ``send_and_receive`` (which
    ``FedAvg.start()`` uses) is timed through them too.
    """

    def __init__(self, grid: Any) -> None:
        self.cpu, self.pulls = 0.0, 0
        for name in ("push_messages", "pull_messages", "get_node_ids"):
            setattr(grid, name, self._timed(getattr(grid, name), name == "pull_messages"))

    def _timed(self, fn: Callable[..., Any], pull: bool) -> Callable[..., Any]:
        def call(*a: Any) -> Any:
            t = time.thread_time()
            try:
                return list(fn(*a))
            finally:
                self.cpu += time.thread_time() - t
                self.pulls += pull
        return call

    def mark(self) -> tuple[float, int]:
        return self.cpu, self.pulls


def manifest(reference: ReferenceProfile) -> PlanManifest:
    """The digits MLP's manifest (64 -> 64 -> 10, weights :data:`SHAPES`) with ``reference``."""
    return PlanManifest(
        name="digits", architecture={"kind": "mlp", "hidden": [64]},
        input=InputSpec(shape=[None, 64], feature_names=[f"p{i}" for i in range(64)]),
        output=OutputSpec(class_labels=[str(i) for i in range(10)]),
        weights=[WeightSpec(name=k, shape=list(s)) for k, s in SHAPES.items()],
        train_batch_size=32, plan_sha256="0" * 64, plan_size=1, built_with={},
        reference=reference,
    )


def run_ours(grid: Any, n: int, k: int, rounds: int, rows: list[dict[str, float]],
             reference: ReferenceProfile, profile: Any = None) -> None:
    """Our RoundRunner, drift steering on, ``k`` of ``n`` nodes a round; one row per round
    (thread CPU, settle CPU, wall, grid CPU, pulls, queries). ``profile`` (a
    ``cProfile.Profile``) is enabled around each round."""
    meter = GridMeter(grid)
    settle = [0.0]

    class TimedRunner(RoundRunner):
        def _validate(self, *a: Any) -> Any:
            t = time.thread_time()
            try:
                return super()._validate(*a)
            finally:
                settle[0] += time.thread_time() - t

        def _aggregate(self, *a: Any) -> Any:
            t = time.thread_time()
            try:
                return super()._aggregate(*a)
            finally:
                settle[0] += time.thread_time() - t

    settings = RoundSettings(model="digits", target_clients=k, min_reports=max(1, k // 2),
                             over_selection=1.0, min_nodes=n, poll_interval_s=0.1,
                             wait_for_nodes_s=120, query_timeout_s=600, train_timeout_s=600)
    policy = make_policy("drift", fair_max_picks=rounds, fair_window=max(5, rounds))
    runner = TimedRunner(grid, manifest(reference), build_strategy("fedavg"), policy,
                         settings=settings)
    weights = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    for r in range(1, rounds + 1):
        settle[0] = 0.0
        g0, p0 = meter.mark()
        wall, cpu = time.perf_counter(), time.thread_time()
        if profile is not None:
            profile.enable()
        outcome = runner.run_round(r, weights)
        if profile is not None:
            profile.disable()
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        g1, p1 = meter.mark()
        rep = outcome.report
        if rep.status != "ok" or len(rep.accepted) != k:
            raise RuntimeError(f"round {r} of ours: {rep.summary_line()}")
        weights = outcome.weights
        rows.append({"cpu": cpu, "settle": settle[0], "wall": wall, "grid": g1 - g0,
                     "pulls": p1 - p0, "queries": len(rep.queried)})


def run_fedavg(grid: Any, n: int, k: int, rounds: int, rows: list[dict[str, float]]) -> None:
    """Flower's FedAvg.start() training ``k`` of ``n`` nodes a round; one row per round.

    A round is the span between two calls of ``evaluate_fn`` (called before round 1 and after
    every round); ``settle`` is the last ``aggregate_train``.
    """
    settle = [0.0]
    meter = GridMeter(grid)

    class TimedFedAvg(FedAvg):
        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            t = time.thread_time()
            try:
                return super().aggregate_train(server_round, replies)
            finally:
                settle[0] = time.thread_time() - t

    marks: list[tuple[float, float, float, int]] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> None:
        marks.append((time.thread_time(), time.perf_counter(), *meter.mark()))
        if server_round > 0:
            (c0, w0, g0, p0), (c1, w1, g1, p1) = marks[-2], marks[-1]
            rows.append({"cpu": c1 - c0, "settle": settle[0], "wall": w1 - w0, "grid": g1 - g0,
                         "pulls": p1 - p0, "queries": 0})

    strategy = TimedFedAvg(fraction_train=k / n, fraction_evaluate=0.0, min_train_nodes=k,
                           min_available_nodes=n)
    initial = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, timeout=600,
                   evaluate_fn=evaluate_fn)
    if len(rows) != rounds:
        raise RuntimeError(f"FedAvg ran {len(rows)} of {rounds} rounds")

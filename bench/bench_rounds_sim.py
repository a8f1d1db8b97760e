"""Server-side CPU per round on Flower's simulation runtime: our RoundRunner beside FedAvg.start().

For each client count (100 and 1,000 virtual SuperNodes by default) one child process runs
both ServerApps on Flower's simulation runtime in process (``simulation.inprocess.federation``:
Flower's ``InMemoryGrid``, LinkState and ``vce_api`` runtime; the ClientApp runs in two worker
threads instead of Ray actors), with the same ClientApp, the same nodes, the same seeds and the
same number of rounds, ``--reps`` times, alternating which system goes first:

* *ours*: :class:`aggregation.rounds.RoundRunner` with drift steering on (drift-prioritised
  selection under the fairness bound, per-node baselines and scores from
  :mod:`aggregation.selection.tracking`, drift-scaled local epochs and aggregation weights),
  validation of every update (structure, finite, norm, direction, num-examples, weight cap) and
  FedAvg's weighted mean; its default ``query_max_age``: no query before training (round 1
  trains the sample directly), eligibility and drift come from the previous rounds' train
  replies, and stale nodes the selection passed over are queried within a budget of a tenth of
  the round's train messages;
* *FedAvg*: Flower's ``FedAvg.start()`` (sample -> train -> ``aggregate_train``).

Both train every node each round (ours: ``target_clients = N``, over-selection 1.0; FedAvg:
``fraction_train = 1.0``), or with ``--fraction F`` the same share ``F`` of the nodes; neither
runs federated evaluation, both pull replies every 0.1 s.

**Server-side cost** is the CPU time of the thread running the ServerApp (``time.thread_time``):
everything the round loop does, including its grid calls (pushing messages into the LinkState,
pulling replies), and nothing the ClientApp's worker threads or the runtime's thread do. A round
of ours is one ``run_round``; a round of FedAvg is the span between two calls of its
``evaluate_fn`` (called before round 1 and after every round). *Settle* is the part after the
replies are in: ours' validation + steering weights + weighted mean, FedAvg's
``aggregate_train``. *Grid* is the part of a round's CPU spent inside the grid's calls (the
same LinkState work for both, growing with the number of pulls, that is with the round's wall
time); *own* is the rest. Each ClientApp reply carries a drift summary, packed as production's
train reply carries it (``drift-packed``, :mod:`edgefleet.drift.packed`): 3 distinct summaries
over the fleet, or (``--fresh-summaries``) a new cumulative summary of each node in every reply,
so that every reply has to be decoded, validated and taken into its node's baseline.

Then the aggregation of 100 updates of 1M parameters without an engine: ours' validation +
steering weights + weighted mean beside ``FedAvg.aggregate_train`` on the same replies.

Run: ``.venv/bin/python bench/bench_rounds_sim.py`` [--clients 100 1000] [--rounds 4]
[--reps 3] [--fraction 1.0] [--fresh-summaries] [--skip-1m] [--profile FILE].
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import ROOT, Column, print_table

RESULT = "RESULT "
SHAPES = {"dense/kernel": (64, 64), "dense/bias": (64,), "out/kernel": (64, 10),
          "out/bias": (10,)}
DRIFT_KINDS = 3  # nodes i, i + 3, ... share a drift summary (their inputs shift by 0.5 * kind)
SYSTEMS = ("ours", "fedavg")


# --- the ClientApp both systems talk to ---------------------------------------------------------
def _reference() -> Any:
    import numpy as np

    from edgefleet.drift import build_reference

    x = np.random.default_rng(1).normal(size=(1000, 64))
    return build_reference(x, np.zeros(1000, int), [f"p{i}" for i in range(64)], 10)


def _client_app(reference: Any, fresh: bool = False) -> Any:
    """Message shapes of ``edge_client.flower_client``; "training" is a numpy perturbation.

    ``fresh``: each node keeps its own cumulative drift accumulator and adds 20 rows before
    every reply, so every reply carries a new summary (as a device serving between rounds
    does); otherwise the nodes share 3 fixed summaries.
    """
    import numpy as np
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp

    from edgefleet.drift import DriftAccumulator
    from edgefleet.drift.packed import pack

    summaries: dict[int, bytes] = {}
    for kind in range(DRIFT_KINDS):
        acc = DriftAccumulator(reference, model="digits", version=1)
        acc.update(np.random.default_rng(kind).normal(loc=0.5 * kind, size=(100, 64)))
        summaries[kind] = pack(acc.to_summary())

    accumulators: dict[int, tuple[Any, list[int]]] = {}

    def drift(pid: int) -> bytes:
        if not fresh:
            return summaries[pid % DRIFT_KINDS]
        if pid not in accumulators:
            accumulators[pid] = (DriftAccumulator(reference, model="digits", version=1), [0])
        acc, calls = accumulators[pid]
        calls[0] += 1
        acc.update(np.random.default_rng((pid, calls[0])).normal(
            loc=0.5 * (pid % DRIFT_KINDS), size=(20, 64)))
        return pack(acc.to_summary())

    app = ClientApp()

    def examples(pid: int) -> int:
        return 50 + pid % 50

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        config = ConfigRecord({"eligible": True, "reasons": "[]",
                               "drift-packed": drift(pid), "plan-sha256": "0" * 64})
        metrics = MetricRecord({"num-examples": examples(pid)})
        return Message(RecordDict({"config": config, "metrics": metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        rnd = msg.content.config_records["config"].get("server-round", 0)
        assert isinstance(rnd, int)
        rng, common = np.random.default_rng((pid, rnd)), np.random.default_rng(rnd)
        arrays = msg.content.array_records["arrays"]
        # honest-looking updates: a shared direction plus per-node noise (validation's
        # direction bound refuses updates that do not point with the round's median)
        new = {k: (a.numpy() + common.normal(0, 0.01, a.shape)
                   + rng.normal(0, 0.005, a.shape)).astype(np.float32)
               for k, a in arrays.items()}
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
            "metrics": MetricRecord({"num-examples": examples(pid), "train-loss": 0.5}),
            "config": ConfigRecord({"status": "ok", "drift-packed": drift(pid)}),
        })
        return Message(content, reply_to=msg)

    return app


# --- the two ServerApps' main functions ---------------------------------------------------------
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


def _ours(grid: Any, n: int, k: int, rounds: int, rows: list[dict[str, float]],
          profile: Any = None) -> None:
    """Our RoundRunner, drift steering on, ``k`` of ``n`` nodes a round; one row per round
    (thread CPU, settle CPU, wall, grid CPU, pulls, queries)."""
    meter = GridMeter(grid)
    import numpy as np

    from aggregation.rounds import RoundRunner, RoundSettings
    from aggregation.selection import make_policy
    from aggregation.strategies import build_strategy
    from edgefleet.plan import InputSpec, OutputSpec, PlanManifest, WeightSpec

    manifest = PlanManifest(
        name="digits", architecture={"kind": "mlp", "hidden": [64]},
        input=InputSpec(shape=[None, 64], feature_names=[f"p{i}" for i in range(64)]),
        output=OutputSpec(class_labels=[str(i) for i in range(10)]),
        weights=[WeightSpec(name=k, shape=list(s)) for k, s in SHAPES.items()],
        train_batch_size=32, plan_sha256="0" * 64, plan_size=1, built_with={},
        reference=_reference(),
    )
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
    runner = TimedRunner(grid, manifest, build_strategy("fedavg"), policy, settings=settings)
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


def _fedavg(grid: Any, n: int, k: int, rounds: int, rows: list[dict[str, float]]) -> None:
    """Flower's FedAvg.start() training ``k`` of ``n`` nodes a round; one row per round."""
    import numpy as np
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy import FedAvg

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


def child(n: int, rounds: int, reps: int, profile_path: str | None, fresh: bool,
          fraction: float) -> None:
    """Run ``reps`` x (ours, FedAvg) on fresh federations; print one ``RESULT {json}`` line."""
    import cProfile
    import logging

    from simulation.inprocess import federation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("aggregation").setLevel(logging.WARNING)
    app = _client_app(_reference(), fresh)
    k = max(1, round(fraction * n))
    # CPU time of the profiled thread: waits for the GIL held by the ClientApp threads excluded
    profile = cProfile.Profile(time.thread_time) if profile_path else None
    out: dict[str, list[list[dict[str, float]]]] = {s: [] for s in SYSTEMS}
    for rep in range(reps):
        order = SYSTEMS if rep % 2 == 0 else SYSTEMS[::-1]
        for system in order:
            print(f"  {n} clients, repetition {rep + 1}/{reps}: {system}", file=sys.stderr,
                  flush=True)
            rows: list[dict[str, float]] = []
            with federation(app, n, workers=2) as grid:
                if system == "ours":
                    _ours(grid, n, k, rounds, rows, profile if rep == reps - 1 else None)
                else:
                    _fedavg(grid, n, k, rounds, rows)
            out[system].append(rows)
    if profile is not None and profile_path:
        profile.dump_stats(profile_path)
    print(RESULT + json.dumps({"clients": n, **out}), flush=True)


# --- the parent: one child per client count, the table ------------------------------------------
def run_child(n: int, rounds: int, reps: int, profile: str | None, fresh: bool,
              fraction: float) -> dict[str, Any]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.path.dirname(__file__)])}
    cmd = [sys.executable, __file__, "--child", "--clients", str(n), "--rounds", str(rounds),
           "--reps", str(reps), "--fraction", str(fraction)]
    if profile:
        cmd += ["--profile", f"{profile}.{n}"]
    if fresh:
        cmd.append("--fresh-summaries")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                          timeout=3600, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"the run with {n} clients failed (exit {proc.returncode})")
    return dict(json.loads(lines[-1][len(RESULT):]))


def _values(res: dict[str, Any], system: str, key: str, keep: Callable[[int], bool],
            rep: int | None = None) -> list[float]:
    """``key`` of the kept rounds of every repetition (or of repetition ``rep``) of ``system``;
    ``own`` is ``cpu - grid``."""
    reps = res[system] if rep is None else [res[system][rep]]
    return [row["cpu"] - row["grid"] if key == "own" else row[key]
            for rows in reps for r, row in enumerate(rows) if keep(r)]


SPANS: list[tuple[str, Callable[[int], bool]]] = [
    ("round 1", lambda r: r == 0), ("rounds 2+", lambda r: r > 0), ("all rounds", lambda r: True)]


def summarise(res: dict[str, Any]) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The two tables' rows for one client count: round 1, rounds 2+, all rounds."""
    totals: list[tuple[object, ...]] = []
    parts: list[tuple[object, ...]] = []
    for label, keep in SPANS:
        def med(system: str, key: str, keep: Callable[[int], bool] = keep) -> float:
            return statistics.median(_values(res, system, key, keep))

        ours, flower = _values(res, "ours", "cpu", keep), _values(res, "fedavg", "cpu", keep)
        per_rep = [statistics.median(_values(res, "ours", "cpu", keep, i))
                   / statistics.median(_values(res, "fedavg", "cpu", keep, i))
                   for i in range(len(res["ours"]))]
        case = f"{res['clients']} clients, {label}"
        n_rounds = len(res["ours"][0])
        per_round = [statistics.median(_values(res, "ours", "cpu", lambda r, j=j: r == j))
                     / statistics.median(_values(res, "fedavg", "cpu", lambda r, j=j: r == j))
                     for j in range(n_rounds) if keep(j)]
        queries = max(_values(res, "ours", "queries", keep), default=0)
        totals.append((case, len(ours),
                       f"{statistics.median(ours):.3f} [{min(ours):.3f}-{max(ours):.3f}]",
                       f"{statistics.median(flower):.3f} [{min(flower):.3f}-{max(flower):.3f}]",
                       statistics.median(ours) / statistics.median(flower),
                       f"{min(per_rep):.2f}-{max(per_rep):.2f}", max(per_round), queries))
        parts.append((case, med("ours", "grid"), med("fedavg", "grid"), med("ours", "pulls"),
                      med("fedavg", "pulls"), med("ours", "own"), med("fedavg", "own"),
                      med("ours", "own") / med("fedavg", "own"), med("ours", "settle"),
                      med("fedavg", "settle"), med("ours", "settle") / med("fedavg", "settle"),
                      med("ours", "wall"), med("fedavg", "wall")))
    return totals, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-1m", action="store_true",
                        help="skip the 100 updates x 1M parameters aggregation")
    parser.add_argument("--profile", help="cProfile ours' last repetition to FILE.<clients>")
    parser.add_argument("--fresh-summaries", action="store_true",
                        help="every reply carries a new drift summary of its node")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of the nodes trained a round, by both systems")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.clients[0], args.rounds, args.reps, args.profile, args.fresh_summaries,
              args.fraction)
        return
    totals: list[tuple[object, ...]] = []
    parts: list[tuple[object, ...]] = []
    for n in args.clients:
        print(f"{n} clients…", file=sys.stderr, flush=True)
        t, p = summarise(run_child(n, args.rounds, args.reps, args.profile,
                                   args.fresh_summaries, args.fraction))
        totals, parts = totals + t, parts + p
    summaries = ("a new drift summary in every reply" if args.fresh_summaries
                 else "3 drift summaries")
    trained = ("every node trains" if args.fraction >= 1.0
               else f"{args.fraction:g} of the nodes train")
    print(f"\nServer-side CPU per round (the ServerApp's thread, time.thread_time): {args.rounds}"
          f" rounds x {args.reps} repetitions, {trained}, 4,810 params, drift steering on,"
          f" {summaries}")
    print_table([Column("case", 24), Column("rounds", 6, "d"),
                 Column("ours (s) median [min-max]", 26),
                 Column("FedAvg (s) median [min-max]", 28),
                 Column("ratio", 6, ".2f", suffix="x"), Column("ratio per rep", 13),
                 Column("worst round", 11, ".2f", suffix="x"),
                 Column("queries/round", 13, ".0f")], totals)
    print("\nWhere it goes (medians, s): grid = inside push/pull/get_node_ids (LinkState);"
          "\nown = the rest of the round; settle = after the last reply (ours: validation +"
          "\nsteering weights + weighted mean; FedAvg: aggregate_train); wall = the whole round")
    print_table([Column("case", 24), Column("grid ours", 9, ".3f"),
                 Column("grid FedAvg", 11, ".3f"), Column("pulls ours", 10, ".0f"),
                 Column("pulls FedAvg", 12, ".0f"), Column("own ours", 8, ".3f"),
                 Column("own FedAvg", 10, ".3f"), Column("ratio", 6, ".2f", suffix="x"),
                 Column("settle ours", 11, ".4f"), Column("settle FedAvg", 13, ".4f"),
                 Column("ratio", 6, ".2f", suffix="x"), Column("wall ours", 9, ".2f"),
                 Column("wall FedAvg", 11, ".2f")], parts)
    print("\nratio = median ours / median FedAvg over every repetition's rounds; ratio per rep ="
          "\nthe same within each repetition (min-max); worst round = the largest of the"
          "\nper-round ratios ours / FedAvg (medians over the repetitions). No round of ours"
          "\nqueries before training; queries/round = stale nodes queried (max over rounds).")
    if not args.skip_1m:
        aggregate_1m()


def _big_replies(n: int, size: int) -> list[Any]:
    """``n`` honest-looking train replies of one ``size``-value float32 weight."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    rng = np.random.default_rng(0)
    common = rng.normal(0, 0.01, size).astype(np.float32)
    out = []
    for i in range(n):
        w = common + rng.normal(0, 0.005, size).astype(np.float32)
        content = RecordDict({"arrays": ArrayRecord({"big/kernel": Array(w)}),
                              "metrics": MetricRecord({"num-examples": 50 + i,
                                                       "train-loss": 0.5})})
        out.append(Message(content, reply_to=Message(RecordDict(), i + 1, "train")))
    return out


def aggregate_1m(repeat: int = 3, n: int = 100, size: int = 1_000_000) -> None:
    """Ours' validation + steering weights + weighted mean (what ``RoundRunner._validate`` and
    ``_aggregate`` run) beside ``FedAvg.aggregate_train`` on the same 100 replies of 1M values."""
    import logging

    import numpy as np
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from aggregation import linear
    from aggregation.steering import SteeringConfig, aggregation_weights
    from aggregation.validation import UpdateValidator
    from edgefleet.plan import WeightSpec

    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    spec = [WeightSpec(name="big/kernel", shape=[size])]
    replies = _big_replies(n, size)
    glob = {"big/kernel": np.zeros(size, np.float32)}

    def ours() -> None:
        validator = UpdateValidator(spec, glob)
        verdicts = validator.validate_all([(i + 1, m.content, 50 + i)
                                           for i, m in enumerate(replies)])
        validator.apply_round_bounds(verdicts)
        accepted = [v for v in verdicts if v.accepted]
        weights = aggregation_weights({v.node_id: int(v.num_examples or 0) for v in accepted},
                                      {}, SteeringConfig())
        linear.weighted_mean([v.arrays for v in accepted], [weights[v.node_id] for v in accepted],
                             [v.metrics[0] for v in accepted], spec)
        if len(accepted) != n:
            raise RuntimeError(f"{n - len(accepted)} of the 1M-value updates refused")

    def flower() -> None:
        FedAvg(weighted_by_key="num-examples").aggregate_train(1, replies)

    times: dict[str, list[float]] = {"ours": [], "flower": []}
    for _ in range(repeat):
        for name, fn in (("ours", ours), ("flower", flower)):
            t = time.thread_time()
            fn()
            times[name].append(time.thread_time() - t)
    o, f = statistics.median(times["ours"]), statistics.median(times["flower"])
    print(f"\naggregation of {n} updates x 1M params (float32), thread CPU, median of {repeat}:"
          f" ours (validation + steering + weighted mean) {o:.3f} s"
          f" [{min(times['ours']):.3f}-{max(times['ours']):.3f}],"
          f" FedAvg.aggregate_train {f:.3f} s"
          f" [{min(times['flower']):.3f}-{max(times['flower']):.3f}], ratio {o / f:.2f}x")


if __name__ == "__main__":
    main()

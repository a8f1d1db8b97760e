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
[--reps 3] [--fraction 1.0] [--fresh-summaries] [--skip-1m] [--profile FILE]. The parts live
beside it: ``_rounds_client.py`` (the ClientApp and the drift its replies carry),
``_rounds_servers.py`` (the two ServerApps, timed round by round), ``_rounds_report.py`` (the
tables); this script runs one child process per client count and the 1M-parameter aggregation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import ROOT
from _rounds_report import Rows, print_tables, summarise

RESULT = "RESULT "
SYSTEMS = ("ours", "fedavg")


# --- the child: fresh federations, both systems, every repetition --------------------------------
def child(n: int, rounds: int, reps: int, profile_path: str | None, fresh: bool,
          fraction: float) -> None:
    """Run ``reps`` x (ours, FedAvg) on fresh federations; print one ``RESULT {json}`` line."""
    import cProfile
    import logging

    from _rounds_client import client_app, reference
    from _rounds_servers import run_fedavg, run_ours

    from simulation.inprocess import federation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("aggregation").setLevel(logging.WARNING)
    ref = reference()
    app = client_app(ref, fresh)
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
                    run_ours(grid, n, k, rounds, rows, ref, profile if rep == reps - 1 else None)
                else:
                    run_fedavg(grid, n, k, rounds, rows)
            out[system].append(rows)
    if profile is not None and profile_path:
        profile.dump_stats(profile_path)
    print(RESULT + json.dumps({"clients": n, **out}), flush=True)


# --- the parent: one child per client count, the tables -----------------------------------------
def run_child(n: int, rounds: int, reps: int, profile: str | None, fresh: bool,
              fraction: float) -> dict[str, Any]:
    """Run :func:`child` for ``n`` clients in a fresh interpreter; its ``RESULT`` as a dict."""
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
    totals: Rows = []
    parts: Rows = []
    for n in args.clients:
        print(f"{n} clients…", file=sys.stderr, flush=True)
        t, p = summarise(run_child(n, args.rounds, args.reps, args.profile,
                                   args.fresh_summaries, args.fraction))
        totals, parts = totals + t, parts + p
    print_tables(totals, parts, rounds=args.rounds, reps=args.reps, fraction=args.fraction,
                 fresh=args.fresh_summaries)
    if not args.skip_1m:
        aggregate_1m()


# --- 100 updates of 1M parameters, without an engine ----------------------------------------------
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

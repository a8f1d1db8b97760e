"""Whole federated rounds on Flower's simulation engine: our RoundRunner beside plain FedAvg.

For each client count (100 and 1,000 virtual SuperNodes by default) it runs, on Flower's
simulation runtime (``flwr.simulation.run_simulation``, Ray backend), the same ClientApp, the
same nodes and the same number of rounds twice:

* *ours*: a ServerApp driving :class:`aggregation.rounds.RoundRunner` (query with drift
  summaries -> drift scores -> drift-prioritised selection under the fairness bound -> train ->
  validation of every update -> drift-boosted weights -> Flower's FedAvg ``aggregate_train``);
* *FedAvg*: a ServerApp calling Flower's ``FedAvg.start()`` (sample -> train -> aggregate).

Fairness: both train every node each round (ours: ``target_clients = N``, over-selection 1.0;
FedAvg: ``fraction_train = 1.0``), neither runs federated evaluation, both pull replies every
0.1 s, both aggregate with FedAvg. The one protocol difference is ours' query step: with
``query_max_age`` (``EDGEFLEET_BENCH_QUERY_MAX_AGE``, default 1000) only the first round queries
every node; later rounds reuse the eligibility and drift the train replies carried
(``aggregation.answer_book``). With ``EDGEFLEET_BENCH_QUERY_MAX_AGE=0`` every round queries
every node (one more message per node and round).
The ClientApp's "training" is a deterministic numpy perturbation of the digits MLP's 4,810
parameters, so client cost is small and identical for both.

Server-side time: *ours* = from the last train reply to the new global model (validation +
steering + aggregation, ``RoundReport.timings``), plus, shown apart, drift scoring and selection
at the start of the round; *FedAvg* = time inside ``FedAvg.aggregate_train``.

Then, as ``bench_aggregation.py`` does, the aggregation of 100 updates of 1M parameters (no
engine: prepared replies), so one run prints all three figures of the issue.

Each (system, N) run is a child process of its own, so Ray starts and stops cleanly each time.
Run: ``.venv/bin/python bench/bench_rounds_sim.py`` [--clients 100 1000] [--rounds 2]
[--client-cpus 1] [--skip-1m].
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import ROOT, Column, print_table

OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}
RESULT = "RESULT "
TOKEN = "EDGEFLEET_BENCH_RUN"  # marks every process a child run starts, to find leftovers
SHAPES = {"dense/kernel": (64, 64), "dense/bias": (64,), "out/kernel": (64, 10),
          "out/bias": (10,)}
DRIFT_KINDS = 3  # nodes i, i + 3, ... share a drift summary (their inputs shift by 0.5 * kind)
# Ours queries a node only when its last answer is older than this many rounds; train replies
# carry the node's drift summary (as the edge ClientApp's do) and renew its answer, so only the
# first round queries (aggregation.answer_book). 0 restores a query of every node every round.
QUERY_MAX_AGE = int(os.environ.get("EDGEFLEET_BENCH_QUERY_MAX_AGE", "1000"))


# --- the child: one simulation ------------------------------------------------------------------
def _reference() -> Any:
    import numpy as np

    from edgefleet.drift import build_reference

    x = np.random.default_rng(1).normal(size=(1000, 64))
    return build_reference(x, np.zeros(1000, int), [f"p{i}" for i in range(64)], 10)


def _client_app(reference: Any) -> Any:
    """The ClientApp both systems talk to (message shapes of ``edge_client.flower_client``)."""
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

    summaries: dict[int, str] = {}  # per actor process, built on first use

    def drift(kind: int) -> str:
        if kind not in summaries:
            acc = DriftAccumulator(reference, model="digits", version=1)
            acc.update(np.random.default_rng(kind).normal(loc=0.5 * kind, size=(100, 64)))
            summaries[kind] = acc.to_summary().model_dump_json()
        return summaries[kind]

    app = ClientApp()

    def examples(pid: int) -> int:
        return 50 + pid % 50

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        config = ConfigRecord({"eligible": True, "reasons": "[]", "drift": drift(pid % DRIFT_KINDS),
                               "plan-sha256": "0" * 64})
        metrics = MetricRecord({"num-examples": examples(pid)})
        return Message(RecordDict({"config": config, "metrics": metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        rng, common = np.random.default_rng(pid), np.random.default_rng(0)
        arrays = msg.content.array_records["arrays"]
        # honest-looking updates: a shared direction plus per-node noise (validation's
        # direction bound refuses updates that do not point with the round's median)
        new = {k: (a.numpy() + common.normal(0, 0.01, a.shape)
                   + rng.normal(0, 0.005, a.shape)).astype(np.float32)
               for k, a in arrays.items()}
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
            "metrics": MetricRecord({"num-examples": examples(pid), "train-loss": 0.5}),
            "config": ConfigRecord({"status": "ok", "drift": drift(pid % DRIFT_KINDS)}),
        })
        return Message(content, reply_to=msg)

    return app


def _ours(n: int, rounds: int, out: dict[str, Any]) -> Any:
    """ServerApp running our RoundRunner; fills ``out`` with per-round timings."""
    import numpy as np
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

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
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = RoundSettings(model="digits", target_clients=n, min_reports=max(1, n // 2),
                                 over_selection=1.0, min_nodes=n, poll_interval_s=0.1,
                                 wait_for_nodes_s=120, query_timeout_s=600, train_timeout_s=600,
                                 query_max_age=QUERY_MAX_AGE)
        runner = RoundRunner(grid, manifest, build_strategy("fedavg"),
                             make_policy("drift", fair_max_picks=rounds), settings=settings)
        scorer, policy = runner.scorer, runner.policy
        assert scorer is not None
        select_s = [0.0]

        class TimedScorer:
            def score(self, summary: Any) -> float | None:
                t = time.perf_counter()
                try:
                    return scorer.score(summary)
                finally:
                    select_s[0] += time.perf_counter() - t

        class TimedPolicy:
            def select(self, *a: Any) -> list[int]:
                t = time.perf_counter()
                try:
                    return list(policy.select(*a))
                finally:
                    select_s[0] += time.perf_counter() - t

        runner.scorer, runner.policy = TimedScorer(), TimedPolicy()  # type: ignore[assignment]
        weights = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
        for r in range(1, rounds + 1):
            select_s[0] = 0.0
            t = time.perf_counter()
            outcome = runner.run_round(r, weights)
            wall = time.perf_counter() - t
            rep = outcome.report
            if rep.status != "ok":
                raise RuntimeError(f"round {r} failed: {rep.summary_line()}")
            weights = outcome.weights
            out["rounds"].append({
                "wall": wall, "server": rep.timings["validate"] + rep.timings["aggregate"],
                "select": select_s[0], "trained": len(rep.accepted),
                "query": rep.timings["query"],
            })

    return app


def _fedavg(n: int, rounds: int, out: dict[str, Any]) -> Any:
    """ServerApp running Flower's FedAvg.start(); fills ``out`` with per-round timings."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    class TimedFedAvg(FedAvg):
        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            replies = list(replies)
            t = time.perf_counter()
            result = super().aggregate_train(server_round, replies)
            out["rounds"].append({"server": time.perf_counter() - t, "select": None, "query": None,
                                  "trained": len(replies)})
            return result

    marks: list[float] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> None:
        marks.append(time.perf_counter())  # called before round 1 and after every round

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                               min_available_nodes=n)
        weights = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
        initial = ArrayRecord({k: Array(v) for k, v in weights.items()})
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, timeout=600,
                       evaluate_fn=evaluate_fn)
        for row, start, end in zip(out["rounds"], marks, marks[1:], strict=False):
            row["wall"] = end - start

    return app


def child(system: str, n: int, rounds: int, client_cpus: float) -> None:
    """Run one simulation and print its timings as one ``RESULT {json}`` line."""
    import logging

    from flwr.simulation import run_simulation

    out: dict[str, Any] = {"system": system, "clients": n, "rounds": []}
    server = _ours(n, rounds, out) if system == "ours" else _fedavg(n, rounds, out)
    t = time.perf_counter()
    run_simulation(server_app=server, client_app=_client_app(_reference()), num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": client_cpus, "num_gpus": 0},
                                   "init_args": {"num_cpus": min(2, os.cpu_count() or 1),
                                                 "logging_level": logging.ERROR}})
    out["total"] = time.perf_counter() - t
    print(RESULT + json.dumps(out), flush=True)


# --- the parent: run the children, print the table ---------------------------------------------
def _processes_with(token: str) -> list[int]:
    """Our processes still alive whose environment carries ``token`` (Ray daemons and workers)."""
    needle = f"{TOKEN}={token}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _stop_leftovers(token: str, grace_s: float = 10.0) -> int:
    """Wait for the child's Ray processes to exit; terminate, then kill, any still running."""
    deadline = time.monotonic() + grace_s
    while (pids := _processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.5)
    stray = len(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(1.0)
        if not (pids := _processes_with(token)):
            break
    return stray


def run_child(system: str, n: int, rounds: int, client_cpus: float, logdir: Path) -> dict[str, Any]:
    env = {**os.environ, **OFFLINE_ENV, TOKEN: uuid.uuid4().hex,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    log = logdir / f"{system}-{n}.log"
    cmd = [sys.executable, __file__, "--child", system, "--clients", str(n),
           "--rounds", str(rounds), "--client-cpus", str(client_cpus)]
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=env,
                              cwd=ROOT, timeout=900, check=False)
    stray = _stop_leftovers(env[TOKEN])
    if stray:
        print(f"stopped {stray} leftover Ray process(es) of the {system} run", file=sys.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{system} with {n} clients failed (exit {proc.returncode}):\n"
                 f"{log.read_text()[-3000:]}")
    return dict(json.loads(lines[-1][len(RESULT):]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client-cpus", type=float, default=1.0,
                        help="Ray num_cpus per virtual client (2 cores / this = actors)")
    parser.add_argument("--skip-1m", action="store_true",
                        help="skip the 100 updates x 1M parameters aggregation")
    parser.add_argument("--child", choices=["ours", "fedavg"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.clients[0], args.rounds, args.client_cpus)
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as tmp:
        for n in args.clients:
            res = {}
            for system in ("ours", "fedavg"):
                print(f"{system}, {n} clients…", file=sys.stderr, flush=True)
                res[system] = run_child(system, n, args.rounds, args.client_cpus, Path(tmp))
            ours, flower = res["ours"]["rounds"], res["fedavg"]["rounds"]
            for r, (o, f) in enumerate(zip(ours, flower, strict=True), start=1):
                rows.append((f"{n} clients, round {r}", o["trained"], o["wall"], o["query"],
                             f["wall"], o["select"], o["server"], f["server"],
                             o["server"] / f["server"]))
            o_srv = statistics.fmean(o["server"] for o in ours)
            f_srv = statistics.fmean(f["server"] for f in flower)
            rows.append((f"{n} clients, mean", None,
                         statistics.fmean(o["wall"] for o in ours),
                         statistics.fmean(o["query"] for o in ours),
                         statistics.fmean(f["wall"] for f in flower),
                         statistics.fmean(o["select"] for o in ours), o_srv, f_srv,
                         o_srv / f_srv))
            rows.append((f"{n} clients, whole run_simulation", None, res["ours"]["total"], None,
                         res["fedavg"]["total"], None, None, None, None))

    print(f"\n{args.rounds} rounds on Flower's simulation engine (Ray, "
          f"{args.client_cpus:g} CPU per client), every node trains, 4,810 params")
    print_table(
        [
            Column("case", 34), Column("trained", 7, "d"),
            Column("wall ours (s)", 13, ".2f"), Column("of it query", 11, ".2f"),
            Column("wall FedAvg (s)", 15, ".2f"),
            Column("select ours (s)", 15, ".3f"),
            Column("server ours (s)", 15, ".3f"), Column("server FedAvg (s)", 17, ".3f"),
            Column("ratio", 6, ".2f", suffix="x"),
        ],
        rows,
    )
    print("\nwall = one round end to end (of it query: ours' query exchange, absent in FedAvg);"
          "\nselect = drift scoring + selection (ours only);"
          "\nserver = last reply -> new global model (ours: validation + steering + FedAvg;"
          "\nFedAvg: FedAvg.aggregate_train). ratio = server ours / server FedAvg.")
    if not args.skip_1m:
        aggregate_1m()


def aggregate_1m(repeat: int = 3) -> None:
    """Aggregation of 100 updates of 1M parameters (``bench_aggregation.py``'s last case)."""
    import logging

    from bench_aggregation import BIG_SPEC, Round, timed
    from flwr.supercore.task_identity import TaskIdentity

    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    big = Round(BIG_SPEC, 100, with_selection=False)
    ours, flower = timed(big.ours, big.prepare, repeat), timed(big.flower, big.prepare, repeat)
    print(f"\naggregation of 100 updates x 1M params (float32), median of {repeat}:"
          f" ours (validation + FedAvg) {ours:.3f} s, FedAvg.aggregate_train {flower:.3f} s,"
          f" ratio {ours / flower:.2f}x")


if __name__ == "__main__":
    main()

"""What drift steering buys: steered vs uniform selection on the same seeds, paired.

``python -m simulation.steering_eval [--seeds 0 1 2 3 4] [--scenarios covariate label_prior
label_swap]`` runs, for every scenario and seed, the experiment of ``examples/steering.toml``
once with uniform selection and once with the default drift steering (``selection.policy =
"drift"``, ``steering = true``, every other knob at its default) on the in-process engine
(:mod:`simulation.inprocess`), and prints one table per scenario: each metric's mean ± std over
the seeds for both, and the paired difference (steered − uniform) with its std and the number
of seeds steering won. Metrics (``D`` = the drift's start round):

* ``rounds_to_0.8_drifted``: rounds from ``D`` (counted from 1) until the drifted clients'
  mean accuracy first reaches 0.80 (``None`` when never: reported as "never");
* ``drifted_post``: the drifted clients' accuracy averaged over rounds ``D`` … end;
* ``clean_post``: the same for the other clients;
* ``final_accuracy``: the global test accuracy after the last round;
* ``drifted_share``: the share of accepted updates that came from drifted clients;
* ``epochs_mean``: mean local epochs per accepted update over the run (training cost).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simulation.config import Experiment, load_experiment

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "steering.toml"
SCENARIOS: dict[str, dict[str, Any]] = {
    "covariate": {"kind": "brightness", "strength": 2.0},
    "label_prior": {"kind": "label_prior", "strength": 1.0},
    "label_swap": {"kind": "label_swap", "strength": 1.0},
}
ARMS: dict[str, dict[str, Any]] = {
    "uniform": {"policy": "uniform", "steering": False},
    "steered": {"policy": "drift", "steering": True},
}
METRICS = ("rounds_to_0.8_drifted", "drifted_post", "clean_post", "final_accuracy",
           "drifted_share", "epochs_mean")


def variant(base: Experiment, scenario: str, arm: str, seed: int, out: Path,
            selection: Mapping[str, Any] | None = None) -> Experiment:
    """``base`` with the scenario's drift, the arm's selection and ``seed``."""
    drift = [d.model_copy(update=SCENARIOS[scenario]) for d in base.drift]
    sel = base.selection.model_copy(update={**ARMS[arm], **(selection or {})})
    return base.model_copy(update={
        "seed": seed, "drift": drift, "selection": sel, "name": f"{scenario}-{arm}-{seed}",
        "output": base.output.model_copy(update={"dir": str(out / f"{scenario}/{arm}/{seed}"),
                                                 "progress": False}),
    })


def metrics(rows: Sequence[Mapping[str, Any]], start: int, epochs_mean: float | None
            ) -> dict[str, float | None]:
    """The module's metrics of one run's rows (drift from round ``start``)."""
    post = [r for r in rows if r["round"] >= start]
    hit = next((r["round"] for r in post if (r["client_acc_drifted"] or 0.0) >= 0.8), None)
    accepted = sum(r["accepted"] for r in post)
    return {
        "rounds_to_0.8_drifted": None if hit is None else float(hit - start + 1),
        "drifted_post": float(np.mean([r["client_acc_drifted"] for r in post])),
        "clean_post": float(np.mean([r["client_acc_other"] for r in post])),
        "final_accuracy": float(rows[-1]["accuracy"]),
        "drifted_share": sum(r["accepted_drifted"] for r in post) / max(accepted, 1),
        "epochs_mean": epochs_mean,
    }


def run_one(exp: Experiment) -> dict[str, float | None]:
    """Run ``exp`` in process and return its metrics."""
    from simulation.inprocess import run_in_process

    result = run_in_process(exp)
    start = min(d.start_round for d in exp.drift)
    return metrics(result.rows, start, result.run_info.get("epochs_mean"))


def _fmt(values: Sequence[float | None], digits: int = 3) -> str:
    v = [x for x in values if x is not None]
    never = len(values) - len(v)
    if not v:
        return "never"
    tail = f" ({never} never)" if never else ""
    return f"{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f}{tail}"


def table(scenario: str, results: Mapping[str, Mapping[int, Mapping[str, float | None]]],
          window: int) -> str:
    """A markdown table: both arms and the paired difference, per metric; ``window``: the
    post-drift rounds, which a run that never reached 0.8 counts in the rounds ratio."""
    seeds = sorted(set(results["uniform"]) & set(results["steered"]))
    lines = [f"### {scenario} ({len(seeds)} seeds: {seeds})", "",
             "| metric | uniform | steered | steered − uniform (paired) | steered better |",
             "|---|---|---|---|---|"]
    for m in METRICS:
        u = [results["uniform"][s][m] for s in seeds]
        t = [results["steered"][s][m] for s in seeds]
        pairs = [(a, b) for a, b in zip(u, t, strict=True) if a is not None and b is not None]
        diff = _fmt([b - a for a, b in pairs]) if pairs else "—"
        lower = m.startswith("rounds")
        wins = sum(1 for a, b in pairs if (b < a if lower else b > a))
        lines.append(f"| {m} | {_fmt(u)} | {_fmt(t)} | {diff} | {wins}/{len(pairs)} |")
    ratio: list[float | None] = []
    for s in seeds:
        ru, rt = (results[a][s]["rounds_to_0.8_drifted"] for a in ("uniform", "steered"))
        ratio.append((window if rt is None else rt) / (window if ru is None else ru))
    censored = any(results[a][s]["rounds_to_0.8_drifted"] is None for a in ARMS for s in seeds)
    note = f" (never = {window} rounds)" if censored else ""
    shown = ", ".join(f"{r:.2f}" for r in ratio if r is not None)
    lines.append(f"| rounds ratio steered / uniform{note} | | | {_fmt(ratio, 2)} | "
                 f"{shown} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(EXAMPLE))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--out", default="var/sim/steering-eval")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--selection", default="{}",
                    help="JSON overrides of the steered arm's [selection] table")
    ap.add_argument("--report", default="",
                    help="print the tables of a finished run's results.json instead")
    args = ap.parse_args(argv)
    base = load_experiment(args.config)
    window = base.rounds - min(d.start_round for d in base.drift) + 1
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        for scenario, res in saved.items():
            print(table(scenario, {a: {int(k): v for k, v in r.items()} for a, r in res.items()},
                        window) + "\n")
        return 0
    out = Path(args.out)
    overrides = json.loads(args.selection)
    all_results: dict[str, Any] = {}
    for scenario in args.scenarios:
        results: dict[str, dict[int, dict[str, float | None]]] = {a: {} for a in ARMS}
        for seed in args.seeds:
            for arm in args.arms:
                exp = variant(base, scenario, arm, seed, out,
                              overrides if arm == "steered" else None)
                results[arm][seed] = run_one(exp)
                print(f"{scenario} {arm} seed {seed}: {json.dumps(results[arm][seed])}",
                      file=sys.stderr, flush=True)
        all_results[scenario] = results
        if all(results[a] for a in ARMS):
            print(table(scenario, results, window), flush=True)
            print(flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(all_results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

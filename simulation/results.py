"""Per-round results: what the harness measures after every round, and the files it writes.

:class:`Evaluator` runs the global model (the plan runtime, in the driver) on the test split,
on the test split as the drifted clients see it, and on every client's current local data (the
per-client accuracy distribution). :func:`round_record` turns a round's report, traffic and
evaluation into one flat, JSON-safe row. The results files hold only what the seed determines
(no real time), so the same seed gives the same ``results.jsonl``:

* ``results.jsonl`` / ``results.csv`` — one row per round (see :data:`COLUMNS`);
* ``summary.json`` — final and best accuracy, time-to-accuracy, rounds to recover from drift.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aggregation.report import RoundReport
from edgefleet.runtime import PlanRuntime
from simulation.config import Experiment
from simulation.population import Population
from simulation.sim_grid import RoundTraffic


@dataclass
class ExperimentResult:
    """A finished run: its rows, summary, final weights and where its files are."""

    experiment: Experiment
    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    weights: dict[str, np.ndarray]
    round_weights: list[dict[str, np.ndarray]] = field(default_factory=list)
    run_info: dict[str, Any] = field(default_factory=dict)


COLUMNS = (
    "round", "status", "sim_time_s", "round_sim_s", "accuracy", "loss", "drifted_test_accuracy",
    "client_acc_mean", "client_acc_p10", "client_acc_drifted", "client_acc_other",
    "drift_active", "eligible", "selected", "accepted", "refused", "declined", "stragglers",
    "participants_total", "accepted_drifted", "accepted_adversaries", "drift_score_mean",
    "drift_score_drifted", "bytes_down", "bytes_up", "train_loss", "refusals",
    "ineligible_reasons", "failure",
)
ACCURACY_TARGETS = (0.8, 0.9, 0.93)


class Evaluator:
    """The global model's accuracy on the test split and on each client's current data."""

    def __init__(self, runtime: PlanRuntime, pop: Population) -> None:
        self.rt = runtime
        self.pop = pop
        self._base_correct: np.ndarray | None = None

    def _correct(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if len(y) == 0:
            return np.zeros(0, bool)
        return np.argmax(self.rt.predict(x), axis=1) == y

    def evaluate(self, server_round: int, weights: Mapping[str, np.ndarray]) -> dict[str, Any]:
        self.rt.set_weights(weights)
        pop = self.pop
        test = self.rt.evaluate(pop.x_test, pop.y_test)
        out: dict[str, Any] = {"accuracy": test.accuracy, "loss": test.loss}
        drifted = pop.drifted_test(server_round)
        out["drifted_test_accuracy"] = (
            float(self._correct(*drifted).mean()) if drifted is not None else None)
        correct = self._correct(pop.x_train, pop.y_train)
        acc = np.empty(pop.count)
        for c in range(pop.count):
            if pop.drifted(c):
                acc[c] = float(np.mean(self._correct(*pop.client_data(c, server_round))))
            else:
                acc[c] = float(np.mean(correct[pop.indices(c)]))
        mask = pop.drifted_mask
        out["client_acc_mean"] = float(acc.mean())
        out["client_acc_p10"] = float(np.percentile(acc, 10))
        out["client_acc_drifted"] = float(acc[mask].mean()) if mask.any() else None
        out["client_acc_other"] = float(acc[~mask].mean()) if (~mask).any() else None
        return out


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def round_record(report: RoundReport, traffic: RoundTraffic, evaluation: Mapping[str, Any],
                 *, node_device: Mapping[int, int], pop: Population,
                 drift_scores: Mapping[int, float | None], participants: set[int]
                 ) -> dict[str, Any]:
    """One results row (see :data:`COLUMNS`); devices, not Flower node ids, are counted."""
    accepted = [node_device.get(n, n) for n in report.accepted]
    participants.update(accepted)
    refusals = Counter(reason.split(":")[0] for reasons in report.refused.values()
                       for reason in reasons)
    by_device = {node_device.get(n, n): s for n, s in drift_scores.items()}
    row: dict[str, Any] = {
        "round": report.server_round, "status": report.status,
        "sim_time_s": traffic.sim_end, "round_sim_s": traffic.sim_end - traffic.sim_start,
        **evaluation,
        "drift_active": pop.drift_active(report.server_round),
        "eligible": len(report.eligible), "selected": len(report.selected),
        "accepted": len(accepted), "refused": len(report.refused),
        "declined": len(report.declined), "stragglers": len(report.stragglers),
        "participants_total": len(participants),
        "accepted_drifted": sum(1 for d in accepted if pop.drifted(d)),
        "accepted_adversaries": sum(1 for d in accepted if pop.adversaries.is_adversary(d)),
        "drift_score_mean": _mean(list(by_device.values())),
        "drift_score_drifted": _mean([s for d, s in by_device.items() if pop.drifted(d)]),
        "bytes_down": traffic.bytes_down, "bytes_up": traffic.bytes_up,
        "train_loss": report.metrics.get("train.train-loss"),
        "refusals": dict(sorted(refusals.items())),
        "ineligible_reasons": dict(sorted(Counter(
            why[:120] for why in report.ineligible.values()).items())),
        "failure": report.failure,
    }
    return {k: _clean(row.get(k)) for k in COLUMNS}


def _clean(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        f = float(v)
        return round(f, 10) if math.isfinite(f) else None
    if isinstance(v, np.integer | np.bool_):
        return v.item()
    return v


def write_rows(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``results.jsonl`` and ``results.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "results.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=False) + "\n")
    with (out_dir / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        for row in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()})


def summarize(rows: Sequence[Mapping[str, Any]], pop: Population, recover_within: float
              ) -> dict[str, Any]:
    """Final/best accuracy, time-to-accuracy and rounds to recover (see the module notes).

    Rounds to recover: with drift starting in round ``R``, the number of rounds after ``R`` until
    the drifted clients' mean accuracy is back within ``recover_within`` of its value in round
    ``R - 1`` (``None``: never within the run).
    """
    ok = [r for r in rows if r["accuracy"] is not None]
    out: dict[str, Any] = {
        "rounds": len(rows), "failed_rounds": sum(1 for r in rows if r["status"] != "ok"),
        "final_accuracy": ok[-1]["accuracy"] if ok else None,
        "best_accuracy": max((r["accuracy"] for r in ok), default=None),
        "final_client_acc_p10": ok[-1]["client_acc_p10"] if ok else None,
        "sim_time_s": rows[-1]["sim_time_s"] if rows else 0.0,
        "refused_total": sum(r["refused"] for r in rows),
        "accepted_adversaries_total": sum(r["accepted_adversaries"] for r in rows),
    }
    for target in ACCURACY_TARGETS:
        hit = next((r for r in ok if r["accuracy"] >= target), None)
        out[f"rounds_to_{target}"] = hit["round"] if hit else None
        out[f"sim_time_to_{target}"] = hit["sim_time_s"] if hit else None
    starts = [s.cfg.start_round for s in pop.scenarios if len(s.clients)]
    if starts and rows:
        start = min(starts)
        before = next((r["client_acc_drifted"] for r in rows if r["round"] == start - 1), None)
        after = [r for r in rows if r["round"] >= start and r["client_acc_drifted"] is not None]
        out["drift_start_round"] = start
        out["drifted_acc_before"] = before
        out["drifted_acc_min_after"] = min((r["client_acc_drifted"] for r in after),
                                           default=None)
        out["drifted_acc_final"] = after[-1]["client_acc_drifted"] if after else None
        back = (next((r["round"] for r in after
                      if r["client_acc_drifted"] >= before - recover_within), None)
                if before is not None else None)
        out["rounds_to_recover"] = back - start if back is not None else None
    return {k: _clean(v) for k, v in out.items()}

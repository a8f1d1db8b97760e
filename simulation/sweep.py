"""Sweeps: one run per combination of the ``[sweep]`` keys, and a comparison table.

Runs are grouped by every swept key except ``seed``; each group's summary metrics are shown as
mean ± std over its seeds (population std, ``ddof=0``; one seed shows ± 0). The table goes to
``sweep.csv``, ``sweep.md`` and ``sweep.html`` (with each group's accuracy curve) in the sweep's
output directory; each run keeps its own directory below it. Running a sweep again resumes
it: a point whose directory holds a finished run of the same experiment is not run again.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simulation.config import Experiment, expand_sweep

METRICS = ("final_accuracy", "best_accuracy", "final_client_acc_p10", "rounds_to_0.9",
           "sim_time_to_0.9", "drifted_acc_min_after", "drifted_acc_final", "rounds_to_recover",
           "refused_total", "accepted_adversaries_total")


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and std of the values that are not ``None`` (and how many there were)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None, 0
    return float(np.mean(v)), float(np.std(v)), len(v)


def comparison(points: Sequence[Mapping[str, Any]], summaries: Sequence[Mapping[str, Any]]
               ) -> list[dict[str, Any]]:
    """One row per group of points that differ only in ``seed``: ``metric`` -> "m ± s"."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(points):
        key = json.dumps({k: v for k, v in p.items() if k != "seed"}, sort_keys=True)
        groups.setdefault(key, []).append(i)
    rows = []
    for key, idx in groups.items():
        row: dict[str, Any] = dict(json.loads(key))
        row["seeds"] = len(idx)
        for m in METRICS:
            mean, std, n = mean_std([summaries[i].get(m) for i in idx])
            if n == 0:
                row[m] = "—"
            else:
                missing = f" ({len(idx) - n} never)" if n < len(idx) else ""
                row[m] = f"{mean:.4g} ± {std:.2g}{missing}"
        rows.append(row)
    return rows


def _markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run_sweep(exp: Experiment, run: Callable[[Experiment], Any]) -> list[dict[str, Any]]:
    """Run every point of ``exp.sweep`` with ``run`` (returns an ``ExperimentResult``)."""
    from simulation.report import html_report, plot_run

    points, summaries, results = [], [], []
    for point, sub in expand_sweep(exp):
        done = finished(sub)
        if done is not None:  # a rerun of the sweep resumes: finished points are kept
            points.append(point)
            summaries.append(done)
            continue
        res = run(sub)
        points.append(point)
        summaries.append(res.summary)
        results.append(res)
    table = comparison(points, summaries)
    out = exp.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    with (out / "sweep.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    (out / "sweep.md").write_text(_markdown(table))
    runs = [{**p, **{m: s.get(m) for m in METRICS}} for p, s in zip(points, summaries,
                                                                        strict=True)]
    (out / "sweep.json").write_text(json.dumps({"table": table, "runs": runs}, indent=1))
    images = []
    if exp.output.plots and results:
        images = plot_run(results[0].rows, out / "plots-first", f"{exp.name} (first run)")[:1]
    page = html_report(f"{exp.name}: sweep", {}, images, exp.model_dump(mode="json"), [],
                       extra="<h2>Comparison (mean ± std over seeds)</h2>" + _html_table(table)
                       + "<h2>Runs</h2>" + _html_table(runs))
    (out / "sweep.html").write_text(page)
    return table


def finished(exp: Experiment) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``exp`` in its output directory, else None.

    The recorded experiment is read back through :class:`Experiment`, so a run recorded before
    a setting existed counts as run with that setting's default (a setting is added with the
    default that keeps the former behaviour); one recorded with a setting that no longer
    exists, or with any other value, is run again.
    """
    out = exp.out_dir()
    try:
        recorded = Experiment.model_validate_json((out / "experiment.json").read_text())
        same = json.loads(recorded.results_key()) == json.loads(exp.results_key())
        return dict(json.loads((out / "summary.json").read_text())) if same else None
    except (OSError, ValueError):
        return None


def _html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    import html

    if not rows:
        return "<p>(none)</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k)))}</td>" for k in keys)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def sweep_dirs(exp: Experiment) -> list[Path]:
    return [sub.out_dir() for _, sub in expand_sweep(exp)]

"""What a run leaves behind: results files, PNG plots and one HTML report.

``<out_dir>/``: ``results.jsonl``, ``results.csv``, ``summary.json`` (what the seed determines),
``timings.jsonl`` (real seconds per round phase; not part of the results), ``run.json`` (wall
time, peak memory, the Ray address), ``plots/*.png`` and ``report.html`` (the plots, the summary
and the experiment, self-contained: the images are embedded).

Plots (matplotlib, Agg backend): accuracy by round and by simulated time; the per-client
accuracy distribution (mean, 10th percentile, drifted vs other clients); participation
(eligible, selected, accepted, refused, stragglers) by round; bytes up and down by round.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simulation.results import ExperimentResult, write_rows

PLOTS = ("accuracy", "accuracy_time", "clients", "participation", "bytes")


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float("nan") if r.get(key) is None else float(r[key]) for r in rows]


#: Line styles in drawing order: markers show each round; the second line is dashed so that two
#: equal series (bytes down and up) both stay visible.
_STYLES = ("o-", "s--", "^-", "v:", "D-.", "x-")
_TITLES = {"accuracy_time": "accuracy over simulated time"}


def _time_axis(rows: Sequence[Mapping[str, Any]]) -> tuple[list[float], str]:
    """Simulated time in the unit that suits its range (s, min or h) and the axis label."""
    seconds = [float(r["sim_time_s"]) for r in rows]
    span = max(seconds, default=0.0)
    for unit, size in (("h", 3600.0), ("min", 60.0)):
        if span >= 2 * size:
            return [t / size for t in seconds], f"simulated time ({unit})"
    return seconds, "simulated time (s)"


def plot_run(rows: Sequence[Mapping[str, Any]], out: Path, title: str) -> list[Path]:
    """Draw the run's PNG plots into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    rounds = [r["round"] for r in rows]
    drift_rounds = [r["round"] for r in rows if r.get("drift_active")]
    specs: dict[str, tuple[str, list[tuple[str, str]], str]] = {
        "accuracy": ("round", [("accuracy", "test"), ("drifted_test_accuracy", "test, drifted")],
                     "accuracy"),
        "accuracy_time": ("sim_time_s", [("accuracy", "test")], "accuracy"),
        "clients": ("round", [("client_acc_mean", "clients: mean"),
                              ("client_acc_p10", "clients: 10th percentile"),
                              ("client_acc_drifted", "drifted clients"),
                              ("client_acc_other", "other clients")], "accuracy on local data"),
        "participation": ("round", [("eligible", "eligible"), ("selected", "selected"),
                                    ("accepted", "accepted"), ("refused", "refused"),
                                    ("stragglers", "stragglers"), ("declined", "declined")],
                          "clients"),
        "bytes": ("round", [("bytes_down", "down"), ("bytes_up", "up")], "KB"),
    }
    paths = []
    for name, (xkey, lines, ylabel) in specs.items():
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        xs, xlabel = _time_axis(rows) if xkey == "sim_time_s" else (rounds, "round")
        scale = 1024.0 if name == "bytes" else 1.0
        for style, (key, label) in zip(_STYLES, lines, strict=False):
            ys = [y / scale for y in _series(rows, key)]
            if any(y == y for y in ys):
                ax.plot(xs, ys, style, label=label, linewidth=1.4, markersize=3)
        if drift_rounds and xkey == "round":
            ax.axvspan(min(drift_rounds) - 0.5, max(drift_rounds) + 0.5, color="orange",
                       alpha=0.12, label="drift active")
        if xkey == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {_TITLES.get(name, name)}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k in keys)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}"
         "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
         "padding:2px 6px;text-align:right}img{margin:4px;border:1px solid #eee}")


def _summary_value(key: str, value: Any) -> Any:
    """A target never reached is said, not left as an empty cell."""
    if value is None and key.startswith(("rounds_to_", "sim_time_to_")):
        return "not reached"
    return value


def html_report(title: str, summary: Mapping[str, Any], images: Sequence[Path],
                experiment: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                extra: str = "") -> str:
    """A self-contained HTML page: summary, plots, per-round table, experiment."""
    summary_rows = [{"metric": k, "value": _summary_value(k, v)} for k, v in summary.items()]
    shown = [{k: r[k] for k in ("round", "accuracy", "client_acc_p10", "client_acc_drifted",
                                "accepted", "refused", "stragglers", "sim_time_s")} for r in rows]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{extra}<h2>Summary</h2>{_table(summary_rows)}<h2>Plots</h2>"
            + "".join(_img(p) for p in images)
            + f"<h2>Rounds</h2>{_table(shown)}<h2>Experiment</h2><pre>"
            f"{html.escape(json.dumps(experiment, indent=1))}</pre></body></html>")


def write_outputs(result: ExperimentResult, timings: Sequence[Mapping[str, Any]]) -> None:
    """Write every file of the module notes for a finished run."""
    exp, out = result.experiment, result.out_dir
    write_rows(out, result.rows)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=1) + "\n")
    (out / "experiment.json").write_text(exp.results_key())
    with (out / "timings.jsonl").open("w") as fh:
        for t in timings:
            fh.write(json.dumps(t) + "\n")
    images = plot_run(result.rows, out / "plots", exp.name) if exp.output.plots else []
    if exp.output.html:
        page = html_report(exp.name, result.summary, images, exp.model_dump(mode="json"),
                           result.rows)
        (out / "report.html").write_text(page)

"""Outputs: results files, plots, the HTML report, the sweep's mean ± std table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulation.report import html_report, plot_run
from simulation.results import COLUMNS, write_rows
from simulation.sweep import comparison, mean_std


def rows(n: int = 4) -> list[dict[str, Any]]:
    out = []
    for r in range(1, n + 1):
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(round=r, status="ok", accuracy=0.2 * r, sim_time_s=60.0 * r,
                   client_acc_mean=0.2 * r, client_acc_p10=0.1 * r, eligible=10, selected=5,
                   accepted=4, refused=1, stragglers=1, declined=0, bytes_down=1000,
                   bytes_up=900, drift_active=r >= 3, refusals={"norm": 1})
        out.append(row)
    return out


def test_results_files(tmp_path: Path) -> None:
    write_rows(tmp_path, rows())
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(ln)["round"] for ln in lines] == [1, 2, 3, 4]
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert csv[0].split(",")[:3] == ["round", "status", "sim_time_s"] and len(csv) == 5


def test_plots_and_html_report(tmp_path: Path) -> None:
    images = plot_run(rows(), tmp_path / "plots", "t")
    assert {p.stem for p in images} == {"accuracy", "accuracy_time", "clients", "participation",
                                        "bytes"}
    for p in images:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    page = html_report("t", {"final_accuracy": 0.8}, images, {"name": "t"}, rows())
    assert page.count("data:image/png;base64,") == 5
    assert "final_accuracy" in page and "<td>0.8</td>" in page
    page = html_report("t", {"rounds_to_0.9": None}, images, {"name": "t"}, rows())
    assert "<td>rounds_to_0.9</td><td>not reached</td>" in page


def test_sweep_table_is_mean_and_std_over_seeds() -> None:
    points = [{"selection.policy": p, "seed": s} for p in ("uniform", "drift") for s in (0, 1, 2)]
    summaries = [{"final_accuracy": v, "rounds_to_recover": rec}
                 for v, rec in zip([0.8, 0.9, 1.0, 0.5, 0.5, 0.5], [3, 5, None, 1, 1, 1],
                                   strict=True)]
    table = comparison(points, summaries)
    assert [(r["selection.policy"], r["seeds"]) for r in table] == [("uniform", 3), ("drift", 3)]
    assert table[0]["final_accuracy"] == "0.9 ± 0.082"
    assert table[0]["rounds_to_recover"] == "4 ± 1 (1 never)"
    assert table[1]["final_accuracy"] == "0.5 ± 0"
    assert mean_std([None, None]) == (None, None, 0)
    assert mean_std([1.0, 3.0]) == (pytest.approx(2.0), pytest.approx(1.0), 2)


@pytest.mark.parametrize(("seconds", "unit", "first"),
                         [(1.2, "s", 1.2), (600.0, "min", 10.0), (36_000.0, "h", 10.0)])
def test_simulated_time_is_plotted_in_a_unit_that_suits_its_range(
        seconds: float, unit: str, first: float) -> None:
    from simulation.report import _time_axis

    xs, label = _time_axis([{"sim_time_s": seconds}, {"sim_time_s": 2 * seconds}])
    assert label == f"simulated time ({unit})" and xs == pytest.approx([first, 2 * first])

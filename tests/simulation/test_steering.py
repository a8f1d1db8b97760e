"""Drift steering in the harness, on a tiny seeded scenario: the production round loop with the
default steering beats uniform selection on the drifted clients, and a seed picks the same
clients every run (the measured figures are in the README, from ``simulation.steering_eval``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulation.steering_eval import metrics
from tests.simulation.conftest import experiment, run_in_process


def scenario(tmp: Path, arm: dict[str, object]):
    return experiment(tmp, rounds=9, seed=3,
                      clients={"count": 16, "per_round": 6},
                      training={"epochs": 1, "lr": 0.2},
                      selection=arm,
                      drift=[{"kind": "brightness", "fraction": 0.5, "start_round": 4,
                              "strength": 2.0}])


def test_default_steering_beats_uniform_on_the_drifted_clients(tmp_path: Path) -> None:
    uniform = run_in_process(scenario(tmp_path / "u", {"policy": "uniform"}))
    steered = run_in_process(scenario(tmp_path / "s", {"policy": "drift", "steering": True}))
    u = metrics(uniform.rows, 4, None)
    s = metrics(steered.rows, 4, None)
    assert s["drifted_share"] > u["drifted_share"]  # the drifted clients got the slots
    assert s["drifted_post"] > u["drifted_post"] + 0.02
    # before the drift both arms ran the same rounds
    assert [r["accuracy"] for r in uniform.rows[:3]] == [r["accuracy"] for r in steered.rows[:3]]
    # the drifted clients scored 1, the others 0 (their own baseline, not the reference)
    after = [r for r in steered.rows if r["round"] >= 4]
    assert all(r["drift_score_drifted"] == 1.0 for r in after if r["accepted_drifted"])
    assert all(np.isclose(r["drift_score_mean"] * r["accepted"], r["accepted_drifted"])
               for r in after)

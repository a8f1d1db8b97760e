"""The production round loop on a simulated fleet (in process): learning, drift, adversaries,
traces, the simulated clock, determinism and replay."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from simulation.replay import freeze
from tests.simulation.conftest import experiment, run_in_process


def test_rounds_learn_and_rows_are_complete(tmp_path: Path) -> None:
    tf_before = "tensorflow" in sys.modules  # another test of this process may have imported it
    server = run_in_process(experiment(tmp_path))
    rows = server.rows
    assert [r["round"] for r in rows] == [1, 2, 3] and {r["status"] for r in rows} == {"ok"}
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] > 0.15
    for r in rows:
        assert r["accepted"] == 6 and r["selected"] == 8  # ceil(1.3 * 6) over-selected
        assert r["stragglers"] == 2  # the two slowest by simulated arrival
        assert r["bytes_down"] > 0 and r["bytes_up"] > 0 and r["round_sim_s"] > 0
        assert 0 <= r["client_acc_p10"] <= r["client_acc_mean"] <= 1
    assert rows[2]["sim_time_s"] > rows[1]["sim_time_s"] > rows[0]["sim_time_s"] > 0
    # in process the clients share the test's interpreter; test_engine_ray.py checks the workers
    assert server.tf_loaded == tf_before


def test_same_seed_same_rows_and_weights_other_seed_differs(tmp_path: Path) -> None:
    a = run_in_process(experiment(tmp_path / "a", seed=1))
    b = run_in_process(experiment(tmp_path / "b", seed=1))
    c = run_in_process(experiment(tmp_path / "c", seed=2))
    assert a.rows == b.rows
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.rows != c.rows


def test_drifted_clients_report_drift_and_lose_accuracy(tmp_path: Path) -> None:
    exp = experiment(tmp_path, rounds=3, clients={"count": 12, "per_round": 12,
                                                  "over_selection": 1.0},
                     drift=[{"kind": "noise", "fraction": 0.5, "start_round": 3,
                             "strength": 2.0}])
    rows = run_in_process(exp).rows
    before, after = rows[1], rows[2]
    assert not before["drift_active"] and after["drift_active"]
    assert after["drift_score_drifted"] > after["drift_score_mean"] - 1e-9
    assert after["drift_score_drifted"] > before["drift_score_drifted"]
    assert after["client_acc_drifted"] < after["client_acc_other"]
    assert after["drifted_test_accuracy"] < after["accuracy"]


def test_validation_refuses_scaled_byzantine_updates(tmp_path: Path) -> None:
    exp = experiment(tmp_path, clients={"count": 12, "per_round": 12, "over_selection": 1.0},
                     adversary={"kind": "scaled", "fraction": 0.25, "scale": 100.0})
    rows = run_in_process(exp).rows
    for r in rows:
        assert r["refused"] == 3 and r["accepted_adversaries"] == 0
        assert r["refusals"] == {"norm": 3}  # the relative norm bound


def test_traces_availability_dropout_and_deadline(tmp_path: Path) -> None:
    traces = {"availability": "diurnal", "window_start_h": 0, "window_end_h": 12,
              "timezones": [0, 12], "dropout": 0.3, "round_deadline_s": 5.0,
              "tiers": [{"name": "fast", "share": 1, "step_s": 0.01},
                        {"name": "slow", "share": 1, "step_s": 10.0}]}
    exp = experiment(tmp_path, clients={"count": 12, "per_round": 4, "min_reports": 1},
                     traces=traces)
    server = run_in_process(exp)
    pop = server.prepared.population
    awake = sum(pop.traces.available(d, 0.0) for d in range(12))
    rows = server.rows
    assert rows[0]["eligible"] == awake < 12
    assert sum(r["declined"] for r in rows) > 0  # drop-outs
    # slow devices never make the 5 s deadline: only fast ones are ever accepted
    slow = {d for d in range(12) if pop.traces.devices[d].tier.name == "slow"}
    assert slow and all(r["round_sim_s"] <= 5.0 + exp.traces.query_s + 1e-9 for r in rows)


def test_replay_same_frozen_inputs_same_weights(tmp_path: Path) -> None:
    rules = {"training": {"epochs": 1, "lr": 0.2, "batch_rule": "drop",
                          "weighting": "examples-trained"},
             "clients": {"count": 6, "per_round": 6, "over_selection": 1.0},
             "selection": {"max_norm_ratio": 0.0, "min_cosine": -1.0, "max_weight_ratio": 0.0},
             "rounds": 2}
    base = experiment(tmp_path / "f", **rules)
    frozen = freeze(base, tmp_path / "frozen.npz")
    a = run_in_process(experiment(tmp_path / "a", replay={"path": str(frozen)}, **rules))
    b = run_in_process(experiment(tmp_path / "b", replay={"path": str(frozen)}, **rules))
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a.round_weights, b.round_weights,
                                                           strict=True) for k in x)
    with np.load(frozen) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["order/1/0"] = arrays["order/1/0"][:, ::-1].copy()  # another order, one client
    other = tmp_path / "other.npz"
    np.savez(other, **arrays)
    c = run_in_process(experiment(tmp_path / "c", replay={"path": str(other)}, **rules))
    assert not np.array_equal(c.round_weights[0]["dense_0_kernel"],
                              a.round_weights[0]["dense_0_kernel"])

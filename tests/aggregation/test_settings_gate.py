"""Run settings from Flower's run config, the canary gate, and server-side holdout evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregation.errors import SettingsError
from aggregation.evaluation import Holdout, HoldoutEvaluator, canary_gate
from aggregation.settings import RunSettings
from edgefleet.errors import InputError, WeightsError
from edgefleet.plan import PlanManifest, load_weights


def test_run_settings_from_a_flower_run_config() -> None:
    config = {
        "server-url": "http://127.0.0.1:8000", "model": "digits", "num-rounds": 5,
        "strategy": "fedprox", "strategy-params.proximal-mu": 0.1, "target-clients": 4,
        "over-selection": 1.5, "max-update-norm": 10, "local-epochs": 3,  # a ClientApp key
        "selection": "drift", "fair-max-picks": 2.0,
    }
    s = RunSettings.from_run_config(config, env={"EDGEFLEET_ADMIN_KEY": "secret"})
    assert (s.model, s.num_rounds, s.strategy, s.target_clients) == ("digits", 5, "fedprox", 4)
    assert s.strategy_params == {"proximal_mu": 0.1}
    assert s.over_selection == 1.5 and s.max_update_norm == 10.0 and s.fair_max_picks == 2
    assert s.admin_key == "secret"
    assert s.resolved_run_name(77) == "digits-fl-77"
    explicit = RunSettings.from_run_config({**config, "admin-key": "k", "run-name": "r1"},
                                           env={"EDGEFLEET_ADMIN_KEY": "secret"})
    assert explicit.admin_key == "k" and explicit.resolved_run_name(77) == "r1"


@pytest.mark.parametrize(
    "config",
    [{"model": "digits"}, {"server-url": "http://x", "model": "m", "num-rounds": "three"},
     {"server-url": "http://x", "model": "m", "num-rounds": 1.5},
     {"server-url": "http://x", "model": "m", "num-rounds": 0},
     {"server-url": "http://x", "model": "m", "lr": True}, {"server-url": 3, "model": "m"}],
)
def test_bad_run_configs_are_refused(config: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        RunSettings.from_run_config(config, env={})


def test_gate_moves_canary_only_within_the_tolerance() -> None:
    prod = {"accuracy": 0.90, "loss": 0.30}
    assert canary_gate({"accuracy": 0.92}, prod).promote
    assert canary_gate({"accuracy": 0.895}, prod, max_drop=0.01).promote
    refused = canary_gate({"accuracy": 0.85}, prod, max_drop=0.01)
    assert not refused.promote and "worse than production" in refused.reason
    assert not canary_gate({"loss": 0.5}, prod, metric="loss", higher_is_better=False).promote
    assert canary_gate({"loss": 0.305}, prod, metric="loss", higher_is_better=False).promote
    assert canary_gate({"accuracy": 0.5}, None).promote  # nothing to compare with
    assert not canary_gate({"accuracy": float("nan")}, prod).promote
    assert not canary_gate({}, prod).promote
    with pytest.raises(SettingsError):
        canary_gate({"accuracy": 0.9}, prod, max_drop=-1)


def test_holdout_evaluator_runs_the_plan_in_tflite(digits_plan_dir: Path, digits_data,
                                                   tmp_path: Path) -> None:
    manifest = PlanManifest.load(digits_plan_dir / "manifest.json")
    plan = (digits_plan_dir / "plan.tflite").read_bytes()
    weights = load_weights(digits_plan_dir / "weights.safetensors", manifest=manifest)
    path = tmp_path / "holdout.npz"
    Holdout(digits_data.x_test, digits_data.y_test).save(path)
    evaluator = HoldoutEvaluator(plan, manifest, Holdout.load(path))
    trained = evaluator(1, weights)
    assert trained["n"] == len(digits_data.y_test) and trained["accuracy"] > 0.8
    zeroed = evaluator.evaluate({k: np.zeros_like(v) for k, v in weights.items()})
    assert zeroed["accuracy"] < 0.3
    with pytest.raises(WeightsError):
        evaluator.evaluate({k: v.astype(np.float64) for k, v in weights.items()})


def test_unreadable_holdout_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "h.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="unreadable holdout"):
        Holdout.load(bad)
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((3, 64)))
    with pytest.raises(InputError):
        Holdout.load(tmp_path / "nolabels.npz")
    with pytest.raises(InputError):
        Holdout(np.zeros((3, 64)), np.zeros(2))


def test_the_aggregation_settings_take_the_run_settings_defaults() -> None:
    """Round, steering, validation, gate and ClientApp defaults are the run settings' ones."""
    import dataclasses

    from aggregation.publishing import GateSettings
    from aggregation.rounds import RoundSettings
    from aggregation.settings import knobs_for
    from aggregation.steering import SteeringConfig
    from aggregation.validation_types import ValidationBounds
    from edgefleet.run_settings import DEFAULTS

    bounds = ValidationBounds()  # 0 ("off") in a run config is None here
    assert (bounds.max_norm_ratio, bounds.max_num_examples) == (DEFAULTS.max_norm_ratio,
                                                                DEFAULTS.max_num_examples)
    assert bounds.max_update_norm is None and not DEFAULTS.max_update_norm
    for cls in (RoundSettings, SteeringConfig):
        shared = knobs_for(cls, RunSettings(server_url="http://x", model="m"))
        assert shared, cls
        for name, default in shared.items():
            if name == "model":
                continue
            field = next(f for f in dataclasses.fields(cls) if f.name == name)
            assert field.default == default == getattr(DEFAULTS, name), (cls, name)
    gate = GateSettings()
    assert (gate.metric, gate.max_drop) == (DEFAULTS.gate_metric, DEFAULTS.gate_max_drop)
    assert RoundSettings(min_reports=2).min_nodes == 2  # 0 means min_reports, as in a run
    s = RunSettings(server_url="http://x", model="m", target_clients=5, min_reports=3,
                    poll_interval_s=0.05, lr=0.2)
    built = RoundSettings(**knobs_for(RoundSettings, s))
    assert (built.model, built.target_clients, built.min_nodes, built.poll_interval_s) == (
        "m", 5, 3, 0.05)
    assert SteeringConfig(**knobs_for(SteeringConfig, s)).lr == 0.2

"""The validation settings of the Byzantine experiments: ``direction_mads`` from an experiment
file and from a run config to the validator, and sweeps resumed across added settings."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from aggregation.validation import UpdateValidator
from aggregation.validation_types import RefusalReason, ValidationBounds
from edgefleet.plan import WeightSpec
from edgefleet.run_settings import DEFAULTS, RunConfigError, RunSettings
from simulation.config import expand_sweep, load_experiment, parse_experiment
from simulation.errors import ConfigError
from simulation.server import bounds
from simulation.sweep import finished

SPEC = [WeightSpec(name="w", shape=[50])]
GLOBAL = {"w": np.zeros(50, np.float32)}


def _skewed_round(b: ValidationBounds) -> list[RefusalReason]:
    """A label-skewed round: a weak shared direction under large client-specific parts."""
    shared = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    validator = UpdateValidator(SPEC, GLOBAL, b)
    verdicts = []
    for i in range(20):
        delta = 0.15 * shared + 2.0 * np.random.default_rng(100 + i).standard_normal(50)
        content = RecordDict({"arrays": ArrayRecord({"w": Array(delta.astype(np.float32))}),
                              "metrics": MetricRecord({"num-examples": 100})})
        verdicts.append(validator.validate(i, content, declared_examples=100))
    validator.apply_round_bounds(verdicts)
    return [r for v in verdicts for r in v.reasons]


def test_direction_mads_from_the_experiment_file_reaches_the_validator(tmp_path: Path) -> None:
    f = tmp_path / "e.toml"
    f.write_text("[selection]\ndirection_mads = 1.5\n")
    assert bounds(load_experiment(f)).direction_mads == 1.5
    default = bounds(parse_experiment({}))
    assert default.direction_mads == DEFAULTS.direction_mads == ValidationBounds().direction_mads
    off = bounds(parse_experiment({"selection": {"direction_mads": -1}}))
    assert off.direction_mads is None and off.min_cosine == default.min_cosine
    # what the validator does with it: the relative bound keeps the skewed honest round, the
    # absolute one (``min_cosine`` alone) refuses some of it
    assert _skewed_round(default) == []
    assert RefusalReason.DIRECTION in _skewed_round(off)
    with pytest.raises(ConfigError, match=r"selection\.direction_mads"):
        parse_experiment({"selection": {"direction_mads": -2}})


def test_direction_mads_is_a_sweepable_key() -> None:
    exp = parse_experiment({"name": "d", "sweep": {"selection.direction_mads": [-1, 3.0]}})
    assert [bounds(e).direction_mads for _, e in expand_sweep(exp)] == [None, 3.0]


def test_direction_mads_is_a_run_setting() -> None:
    base = {"server-url": "http://127.0.0.1:8000", "model": "digits"}
    assert RunSettings.from_run_config(base, env={}).direction_mads == 3.0
    assert RunSettings.from_run_config({**base, "direction-mads": 1.5},
                                       env={}).direction_mads == 1.5
    with pytest.raises(RunConfigError):
        RunSettings.from_run_config({**base, "direction-mads": -2.0}, env={})


class _Built(Exception):
    """Raised by the stand-in round loop with the bounds the ServerApp built."""


def _production_bounds(monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]
                       ) -> ValidationBounds:
    """The ``ValidationBounds`` the production ServerApp gives its round loop for ``config``."""
    from aggregation import server_app

    def runner(*args: Any, bounds: ValidationBounds, **kwargs: Any) -> None:
        raise _Built(bounds)

    start = SimpleNamespace(manifest=SimpleNamespace(weights=SPEC, plan_sha256="0" * 64),
                            plan=b"", weights=GLOBAL)
    monkeypatch.setattr(server_app, "RoundRunner", runner)
    monkeypatch.setattr(server_app, "signed_version", lambda *a, **k: start)
    client = SimpleNamespace(production_version=lambda model: 1,
                             latest_run_version=lambda model, run: None)
    settings = RunSettings.from_run_config(
        {"server-url": "http://127.0.0.1:8000", "model": "digits", **config}, env={})
    with pytest.raises(_Built) as built:
        server_app._run(None, settings, client, "r")  # type: ignore[arg-type]
    bounds = built.value.args[0]
    assert isinstance(bounds, ValidationBounds)
    return bounds


def test_direction_mads_reaches_the_production_validator(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    assert _production_bounds(monkeypatch, {}).direction_mads == DEFAULTS.direction_mads
    assert _production_bounds(monkeypatch, {"direction-mads": 1.5}).direction_mads == 1.5
    assert _production_bounds(monkeypatch, {"direction-mads": -1.0}).direction_mads is None


def test_a_sweep_resumes_runs_recorded_before_a_setting_existed(tmp_path: Path) -> None:
    exp = parse_experiment({"name": "r", "output": {"dir": str(tmp_path)}})
    recorded = json.loads(exp.results_key())
    del recorded["selection"]["direction_mads"]  # a run recorded before the key existed
    (tmp_path / "experiment.json").write_text(json.dumps(recorded))
    (tmp_path / "summary.json").write_text(json.dumps({"final_accuracy": 0.5}))
    assert finished(exp) == {"final_accuracy": 0.5}  # the default is what it ran with
    other = parse_experiment({"name": "r", "output": {"dir": str(tmp_path)},
                              "selection": {"direction_mads": 1.0}})
    assert finished(other) is None
    recorded["selection"]["gone"] = 1  # a setting that no longer exists: run again
    (tmp_path / "experiment.json").write_text(json.dumps(recorded))
    assert finished(exp) is None

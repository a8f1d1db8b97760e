"""The run settings, defined once: types as TOML gives them, one default per knob, run-config
keys there and back, and the Flower app's table generated from them."""

from __future__ import annotations

import pytest

from edgefleet.run_settings import (
    ADMIN_KEY_ENV,
    APP_EXAMPLES,
    DEFAULTS,
    RunConfigError,
    RunKnobs,
    RunSettings,
    app_config_table,
)

REQUIRED = {"server-url": "http://127.0.0.1:8000", "model": "digits"}


def test_run_config_round_trip_with_strategy_params() -> None:
    s = RunSettings(server_url="http://h:1", model="m", num_rounds=7, lr=0.2,
                    strategy="fedprox", strategy_params={"proximal_mu": 0.1}, selection="uniform")
    config = s.run_config()
    assert config == {"server-url": "http://h:1", "model": "m", "num-rounds": 7, "lr": 0.2,
                      "strategy": "fedprox", "strategy-params.proximal-mu": 0.1,
                      "selection": "uniform"}  # only what differs from the defaults
    assert RunSettings.from_run_config(config, env={}) == s
    full = s.run_config(changed_only=False)
    assert set(full) - {"strategy-params.proximal-mu"} == set(app_config_table())


def test_the_defaults_are_the_measured_steering() -> None:
    # README, "Drift steering: change against each client's own baseline, measured"
    assert (DEFAULTS.selection, DEFAULTS.max_extra_epochs) == ("drift", 6)
    assert RunSettings.from_run_config(REQUIRED, env={}).selection == "drift"


def test_values_are_typed_as_toml_gives_them() -> None:
    s = RunSettings.from_run_config({**REQUIRED, "fair-max-picks": 2.0, "over-selection": 2,
                                     "a-clientapp-key": "ignored"}, env={})
    assert s.fair_max_picks == 2 and isinstance(s.over_selection, float)
    for bad in ({"num-rounds": 1.5}, {"lr": True}, {"seed": "3x"}, {"model": 3},
                {"num-rounds": 0}, {"min-reports": 4, "target-clients": 3}, {"lr": -0.1}):
        with pytest.raises(RunConfigError, match="run config"):
            RunSettings.from_run_config({**REQUIRED, **bad}, env={})
    with pytest.raises(RunConfigError, match="'server-url': required key is missing"):
        RunSettings.from_run_config({"model": "m"}, env={})


def test_the_admin_key_may_come_from_the_environment() -> None:
    assert RunSettings.from_run_config(REQUIRED, env={ADMIN_KEY_ENV: "k"}).admin_key == "k"
    explicit = {**REQUIRED, "admin-key": "mine"}
    assert RunSettings.from_run_config(explicit, env={ADMIN_KEY_ENV: "k"}).admin_key == "mine"


def test_the_app_table_is_the_examples_then_every_default() -> None:
    table = app_config_table()
    assert list(table)[:2] == ["server-url", "model"]
    assert (table["server-url"], table["model"]) == (APP_EXAMPLES["server_url"],
                                                     APP_EXAMPLES["model"])
    knobs = [k for k in RunKnobs.model_fields if k != "strategy_params"]
    assert list(table)[2:] == [k.replace("_", "-") for k in knobs]
    assert all(table[k.replace("_", "-")] == getattr(DEFAULTS, k) for k in knobs)

"""The deployment Flower app (``aggregation/flower_app``) stays in sync with the ServerApp."""

from __future__ import annotations

import tomllib

from typer.testing import CliRunner

from aggregation.cli import app as fl_cli
from aggregation.settings import RunSettings
from edgefleet.run_settings import APP_EXAMPLES, DEFAULTS, app_config_table
from simulation.fleet import DEFAULT_APP


def _app() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((DEFAULT_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def test_app_config_table_is_the_run_settings() -> None:
    """The Flower app's table, ``edgefleet fl run-config`` and the run settings' one definition
    agree: same keys, same order, same values, same TOML types."""
    expected = app_config_table()
    result = CliRunner().invoke(fl_cli, ["run-config"])
    assert result.exit_code == 0, result.output
    template = tomllib.loads(result.output)["tool"]["flwr"]["app"]["config"]
    config = _app()["config"]
    for table in (template, config):
        assert list(table) == list(expected)  # same keys, same order
        for key, value in expected.items():
            assert table[key] == value and type(table[key]) is type(value), key
    settings = RunSettings.from_run_config(config, env={})
    assert (settings.server_url, settings.model) == (APP_EXAMPLES["server_url"],
                                                     APP_EXAMPLES["model"])
    knobs = settings.model_dump(exclude={"server_url", "model"})
    assert knobs == DEFAULTS.model_dump()  # the app changes no default


def test_app_runs_the_installed_server_and_client_apps() -> None:
    app = _app()
    assert app["components"] == {"serverapp": "aggregation.server_app:app",
                                 "clientapp": "edge_client.flower_client:app"}
    assert app["publisher"]
    assert sorted(p.name for p in DEFAULT_APP.iterdir()) == ["pyproject.toml"]  # no code


def test_components_import() -> None:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from aggregation.server_app import app as server_app
    from edge_client.flower_client import app as client_app

    assert isinstance(server_app, ServerApp) and isinstance(client_app, ClientApp)

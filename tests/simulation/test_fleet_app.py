"""The deployment Flower app (``aggregation/flower_app``) stays in sync with the ServerApp."""

from __future__ import annotations

import tomllib

from typer.testing import CliRunner

from aggregation.cli import app as fl_cli
from aggregation.settings import RunSettings
from simulation.fleet import DEFAULT_APP

# required by RunSettings: the app gives usable local defaults instead of ""
REQUIRED = {"server-url": "http://127.0.0.1:8000", "model": "digits"}


def _app() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((DEFAULT_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def test_app_config_matches_edgefleet_fl_run_config() -> None:
    result = CliRunner().invoke(fl_cli, ["run-config"])
    assert result.exit_code == 0, result.output
    template = tomllib.loads(result.output)["tool"]["flwr"]["app"]["config"]
    config = _app()["config"]
    assert list(config) == list(template)  # same keys, same order
    for key, default in template.items():
        expected = REQUIRED.get(key, default)
        assert config[key] == expected and type(config[key]) is type(expected), key
    settings = RunSettings.from_run_config(config, env={})
    assert (settings.server_url, settings.model) == (REQUIRED["server-url"], REQUIRED["model"])


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

"""`edgefleet fl` commands: the run-config template and one controller check against a server."""

from __future__ import annotations

import tomllib

from typer.testing import CliRunner

from aggregation.cli import app
from aggregation.settings import RunSettings
from tests.aggregation.conftest import Server


def test_run_config_template_is_toml_the_settings_accept() -> None:
    result = CliRunner().invoke(app, ["run-config"])
    assert result.exit_code == 0, result.output
    table = tomllib.loads(result.output)["tool"]["flwr"]["app"]["config"]
    table.update({"server-url": "http://127.0.0.1:1", "model": "digits"})
    settings = RunSettings.from_run_config(table, env={})
    assert settings.num_rounds == 3 and settings.over_selection == 1.3


def test_controller_waits_when_the_model_has_no_production_version(
    registry_server: Server,
) -> None:
    result = CliRunner().invoke(app, [
        "controller", "--model", "unknown-model", "--server-url", registry_server.url,
        "--admin-key", registry_server.admin_key, "--max-iterations", "1",
        "--schedule-hours", "0", "--run-config", "num-rounds=2",
    ])
    assert result.exit_code == 0, result.output
    assert "wait  no-data" in result.output

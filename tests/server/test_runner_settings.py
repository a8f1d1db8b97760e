"""The runner's inference keys follow the server's own rule (``MIN_SECRET_CHARS`` of
:mod:`server.settings`): a shorter secret is a one-line settings error of ``edgefleet server
runner`` that names the setting and never shows the secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from edgefleet_cli.main import app
from server.runner.settings import load_runner_settings
from server.settings import MIN_SECRET_CHARS, ServerSettings


@pytest.mark.parametrize("length", [1, MIN_SECRET_CHARS - 1, MIN_SECRET_CHARS])
@pytest.mark.parametrize("named", [True, False])
def test_runner_and_server_accept_the_same_inference_keys(length: int, named: bool) -> None:
    key = ("shop:" if named else "") + "s" * length

    def accepted(make: object) -> bool:
        try:
            make(inference_keys=key)  # type: ignore[operator]
        except ValidationError:
            return False
        return True

    assert accepted(load_runner_settings) == accepted(ServerSettings) == (
        length >= MIN_SECRET_CHARS)


def test_a_short_inference_key_is_a_one_line_runner_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGEFLEET_RUNNER_ENV_FILE", raising=False)
    keys = f"shop:{'k' * MIN_SECRET_CHARS},kiosk:short7"
    out = CliRunner().invoke(app, ["server", "runner", "--port", "0"],
                             env={"EDGEFLEET_RUNNER_INFERENCE_KEYS": keys})
    assert out.exit_code == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "error: invalid runner settings: EDGEFLEET_RUNNER_INFERENCE_KEYS: key 2 ('kiosk') has "
        f"fewer than {MIN_SECRET_CHARS} characters of secret"]
    assert "short7" not in out.output

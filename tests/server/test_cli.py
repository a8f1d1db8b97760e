"""``edgefleet server`` commands: migrate, create-model, publish (against a scratch SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from registry.db import make_engine, session_scope
from registry.versions import get_version


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("EDGEFLEET_SERVER_DATABASE_URL", url)
    monkeypatch.setenv("EDGEFLEET_SERVER_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    return url


def test_migrate_create_and_publish(env: str, digits_plan_dir: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["server", "migrate"])
    assert r.exit_code == 0 and "revision 0001 (was empty)" in r.output
    r = runner.invoke(app, ["server", "create-model", "digits", "--tag", "vision"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["server", "create-model", "digits"])
    assert r.exit_code == 1 and "already exists" in r.output
    r = runner.invoke(
        app,
        [
            "server",
            "publish",
            str(digits_plan_dir),
            "--model",
            "digits",
            "--alias",
            "production",
            "--metric",
            "accuracy=0.9",
        ],
    )
    assert r.exit_code == 0 and "version 1 as production" in r.output, r.output
    engine = make_engine(env)
    with session_scope(engine) as s:
        assert get_version(s, "digits", 1).metrics == {"accuracy": 0.9}
    engine.dispose()
    r = runner.invoke(app, ["server", "publish", str(digits_plan_dir.parent), "--model", "digits"])
    assert r.exit_code == 1 and "lacks" in r.output
    r = runner.invoke(
        app, ["server", "publish", str(digits_plan_dir), "--model", "x", "--metric", "acc"]
    )
    assert r.exit_code == 1 and "name=value" in r.output


def test_bad_env_file_is_a_clear_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["server", "migrate", "--env-file", str(tmp_path / "nope.env")])
    assert r.exit_code == 2 and "does not exist" in r.output

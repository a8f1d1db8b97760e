"""``edgefleet server`` commands: migrate, create-model, publish (against a scratch SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet_cli.main import app
from registry.db import make_engine, session_scope
from registry.migrate import head_revision
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
    assert r.exit_code == 0 and f"revision {head_revision()} (was empty)" in r.output
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


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and "Traceback" not in output
    return lines[0]


def test_unreachable_database_is_one_line_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # port 1 on the loopback: nothing listens there, the connection is refused at once
    url = "postgresql+psycopg://edgefleet:hunter2-secret@127.0.0.1:1/edgefleet?connect_timeout=2"
    monkeypatch.setenv("EDGEFLEET_SERVER_DATABASE_URL", url)
    monkeypatch.setenv("EDGEFLEET_SERVER_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    runner = CliRunner()
    for args in (["server", "migrate"], ["server", "run", "--port", "1"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1, r.output
        line = _one_error_line(r.output)
        assert "hunter2-secret" not in r.output
        assert "edgefleet:***@127.0.0.1:1" in line, line


def test_unknown_revision_is_one_line(env: str) -> None:
    r = CliRunner().invoke(app, ["server", "migrate", "--revision", "bogus"])
    assert r.exit_code == 1, r.output
    line = _one_error_line(r.output)
    assert "bogus" in line and "migrate" in line


def test_invalid_keys_are_named_without_printing_any_secret(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_SERVER_ADMIN_KEYS", "alice:verylongsecretvalue1,bob:short")
    monkeypatch.setenv("EDGEFLEET_SERVER_INFERENCE_KEYS", "app:another-long-secret")
    for args in (["server", "migrate"], ["server", "run", "--port", "1"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, r.output
        line = _one_error_line(r.output)
        assert "EDGEFLEET_SERVER_ADMIN_KEYS: key 2 ('bob') has fewer than 8" in line, line
        for secret in ("verylongsecretvalue1", "short", "another-long-secret"):
            assert secret not in r.output
        assert "pydantic.dev" not in r.output


@pytest.mark.parametrize(
    ("name", "value", "where"),
    [
        ("BATCHING", '{"default": {"max_batchx": 3}}', "BATCHING.default.max_batchx"),
        ("DRIFT_THRESHOLDS", '{"default": {"bogus": 3}}', "DRIFT_THRESHOLDS.default.bogus"),
    ],
)
def test_a_bad_json_policy_is_one_line_before_the_server_starts(
    env: str, monkeypatch: pytest.MonkeyPatch, name: str, value: str, where: str
) -> None:
    monkeypatch.setenv(f"EDGEFLEET_SERVER_{name}", value)
    r = CliRunner().invoke(app, ["server", "run", "--port", "1"])
    assert r.exit_code == 2, r.output
    line = _one_error_line(r.output)
    assert f"EDGEFLEET_SERVER_{where}: Extra inputs are not permitted" in line, line


def test_a_bad_model_name_is_one_line_naming_the_field(env: str) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["server", "migrate"]).exit_code == 0
    r = runner.invoke(app, ["server", "create-model", "bad name"])
    assert r.exit_code == 1, r.output
    line = _one_error_line(r.output)
    assert line.startswith("error: name: ") and "pydantic.dev" not in r.output, line

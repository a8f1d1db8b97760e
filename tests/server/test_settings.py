"""Settings: one environment prefix or a file; key lists; no insecure defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from server.security import match_key, parse_keys
from server.settings import ServerSettings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("EDGEFLEET_SERVER_"):
            monkeypatch.delenv(key)


def test_defaults_are_embedded_and_closed() -> None:
    s = ServerSettings()
    assert s.database_url.startswith("sqlite:///") and s.admin_keys == []
    assert s.enrollment_tokens == [] and not s.public_inference and s.auto_migrate


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_SERVER_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("EDGEFLEET_SERVER_ADMIN_KEYS", "alice:secret-one, secret-two-x")
    monkeypatch.setenv("EDGEFLEET_SERVER_ENROLLMENT_TOKENS", '["enrol-token-1"]')
    monkeypatch.setenv("EDGEFLEET_SERVER_MAX_BATCH", "16")
    s = load_settings()
    assert s.database_url == "postgresql+psycopg://u@h/db" and s.max_batch == 16
    keys = parse_keys(s.admin_keys, "admin")
    assert keys[0].name == "alice" and keys[0].secret == b"secret-one"
    assert keys[1].name.startswith("admin-") and keys[1].secret == b"secret-two-x"
    assert match_key("secret-one", keys) is keys[0] and match_key("secret-on", keys) is None
    assert [t.get_secret_value() for t in s.enrollment_tokens] == ["enrol-token-1"]
    assert "secret-one" not in repr(s)


def test_env_file_and_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "server.env"
    env.write_text("EDGEFLEET_SERVER_POLL_INTERVAL_S=5\nEDGEFLEET_SERVER_LOG_LEVEL=DEBUG\n")
    monkeypatch.setenv("EDGEFLEET_SERVER_LOG_LEVEL", "WARNING")
    s = load_settings(env)
    assert s.poll_interval_s == 5 and s.log_level == "WARNING"  # the environment wins
    monkeypatch.setenv("EDGEFLEET_SERVER_ENV_FILE", str(env))
    assert load_settings().poll_interval_s == 5
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.env")


@pytest.mark.parametrize(
    "overrides",
    [
        {"admin_keys": ["short"]},
        {"max_upload_bytes": 0},
        {"canary_rollout_percent": 120},
        {"interpreter": "tensorflow"},
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ServerSettings(**overrides)  # type: ignore[arg-type]


def test_secrets_stay_secret() -> None:
    s = ServerSettings(admin_keys=[SecretStr("bob:very-secret")])
    assert "very-secret" not in s.model_dump_json()


@pytest.mark.parametrize("given", ["warning", "Warning", " WARNING "])
def test_log_level_in_any_case(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("EDGEFLEET_SERVER_LOG_LEVEL", given)
    assert load_settings().log_level == "WARNING"
    assert ServerSettings(log_level="debug").log_level == "DEBUG"  # type: ignore[arg-type]
    monkeypatch.setenv("EDGEFLEET_SERVER_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError, match="log_level"):
        load_settings()


@pytest.mark.parametrize(("given", "stored"), [("litert", "ai-edge-litert"),
                                               ("ai_edge_litert", "ai-edge-litert"),
                                               ("tflite", "tflite-runtime"), ("AUTO", "auto")])
def test_interpreter_takes_the_clis_spellings(monkeypatch: pytest.MonkeyPatch, given: str,
                                              stored: str) -> None:
    monkeypatch.setenv("EDGEFLEET_SERVER_INTERPRETER", given)
    assert load_settings().interpreter == stored

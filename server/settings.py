"""Server settings: environment variables prefixed ``EDGEFLEET_SERVER_``, or a dotenv file.

Every field below can be set as ``EDGEFLEET_SERVER_<FIELD>`` (for example
``EDGEFLEET_SERVER_DATABASE_URL=postgresql+psycopg://edgefleet@db/edgefleet``); a file with the
same keys is read when passed to :func:`load_settings` (``edgefleet server run --env-file``) or
named by ``EDGEFLEET_SERVER_ENV_FILE``. Environment variables win over the file.

Key lists (``ADMIN_KEYS``, ``ENROLLMENT_TOKENS``, ``INFERENCE_KEYS``) take a comma-separated list
or a JSON array. An entry ``name:secret`` names the key (the name is what audit trails and logs
show, e.g. ``alice:3f9a…``); a bare secret is named after its hash. With no admin key configured
the registry's write API refuses every request: there is no default key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edgefleet.errors import describe_validation
from edgefleet.log_level import LogLevel

__all__ = ["MIN_SECRET_CHARS", "ServerSettings", "check_key_lengths", "describe_invalid",
           "load_settings"]

KeyList = Annotated[list[SecretStr], NoDecode]
#: The fewest characters of secret (after ``name:``) a configured key or token may have.
MIN_SECRET_CHARS: Final = 8


class ServerSettings(BaseSettings):
    """Configuration of one server process.

    Parameters
    ----------
    database_url
        SQLAlchemy URL; SQLite (default ``sqlite:///./var/edgefleet.db``) or PostgreSQL
        (``postgresql+psycopg://user@host:5432/db``).
    artifact_dir
        Root of the content-addressed artifact store (default ``./var/artifacts``).
    admin_keys, enrollment_tokens, inference_keys
        Secrets for registry writes, device enrolment and applications' fallback inference.
    runner_keys
        Secrets of inference runners (``edgefleet server runner``): they read the serving
        snapshot (``/api/v1/serving/models``) and the artifacts of READY versions, nothing else.
    public_inference
        Serve V2 inference without credentials (default ``False``: a device token, an admin
        key or an inference key is required).
    max_upload_bytes, max_request_bytes
        Body limits of version uploads (default 256 MiB) and of every other request (4 MiB);
        larger bodies get 413.
    max_batch
        Most rows one inference request may carry (default 1024).
    canary_rollout_percent
        Share of the fleet a new ``canary`` alias takes when none is given (default 10).
    poll_interval_s
        Assignment poll interval suggested to devices (default 60).
    last_seen_interval_s
        ``last_seen`` is written at most this often per device (default 30).
    inference_cache_size
        Loaded plan runtimes kept (least recently used evicted; default 8).
    interpreter
        TFLite interpreter: ``auto``, ``ai-edge-litert`` or ``tflite-runtime``.
    inference_threads
        Interpreter threads per process, each loaded version getting one interpreter per
        thread (default 0: the cores this process may use; see :mod:`server.inference.pool`).
    batching
        Micro-batching as :class:`server.inference.batcher.BatchingSettings` JSON
        (``{"default": {"max_batch": 32, "max_queue_delay_ms": 0, "parallel_rows": 0},
        "per_model": {...}}``; continuous batching, see :mod:`server.inference.batcher`).
    serving_refresh_s
        How often each process checks whether models, aliases, versions or device tokens changed
        (default 0.25 s); the V2 path's staleness bound is this plus one refresh
        (:mod:`server.inference.table`).
    auto_migrate
        Migrate the database to the newest schema at start-up (default ``True``).
    log_level, log_format
        Logging of the server: a level name in any case (default ``INFO``), and ``json`` lines
        (default) or ``text``.
    drift_thresholds
        Drift thresholds as :class:`server.drift.ThresholdPolicy` JSON (``{"default": {...},
        "per_model": {"digits": {...}}}``); empty for the defaults.
    metrics_enabled
        Serve Prometheus metrics at ``/metrics`` (default ``True``; see :mod:`server.metrics`).
    ssl_certfile, ssl_keyfile, ssl_ca_certs
        Serve HTTPS with this certificate (chain) and key (``edgefleet server run``); with
        ``ssl_ca_certs`` as well, clients must present a certificate signed by that CA.
    signing_key_path
        The registry's Ed25519 version-signing key (PEM, created on first start with mode 0600;
        default ``./var/keys/signing-ed25519.pem``). It must lie outside ``artifact_dir``; see
        :mod:`registry.signing` and ``edgefleet server keys rotate``.
    scrub_interval_s
        Seconds between background scrubs of the artifact store (default 3600; 0 disables;
        see :mod:`registry.integrity` and ``edgefleet server scrub``).
    rollout_tick_s
        Seconds between the rollout controller's ticks (default 5; 0 disables it; see
        :mod:`server.rollouts`).
    inference_log_enabled
        Log every V2 inference (default ``True``; see :mod:`server.evidence.writer`).
    inference_log_sample_rate
        Share of logged requests whose inputs are stored (default 0: only a sha256 of each).
    inference_log_retention_days
        Age after which logged inferences are pruned (default 30).
    inference_log_queue_size, inference_log_batch_size, inference_log_flush_interval_s
        Answers queued at most before new ones are dropped (default 10,000), answers per
        insert (500) and the longest wait before a partial batch is written (0.5 s).
    inference_log_prune_interval_s
        Seconds between prunes of old records (default 300; 0 disables).
    inference_log_process
        Write the log's batches in a child process, off the server's GIL (default ``True``;
        an in-memory SQLite database is always written in the server's process; see
        :mod:`server.evidence.writer_process`).
    """

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_SERVER_", extra="ignore", env_file_encoding="utf-8"
    )

    database_url: str = "sqlite:///./var/edgefleet.db"
    artifact_dir: Path = Path("./var/artifacts")
    admin_keys: KeyList = Field(default_factory=list)
    enrollment_tokens: KeyList = Field(default_factory=list)
    inference_keys: KeyList = Field(default_factory=list)
    runner_keys: KeyList = Field(default_factory=list)
    public_inference: bool = False
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_batch: int = Field(default=1024, gt=0)
    canary_rollout_percent: float = Field(default=10.0, ge=0, le=100)
    poll_interval_s: float = Field(default=60.0, gt=0)
    last_seen_interval_s: float = Field(default=30.0, ge=0)
    inference_cache_size: int = Field(default=8, gt=0)
    inference_threads: int = Field(default=0, ge=0, le=256)
    batching: dict[str, Any] = Field(default_factory=dict)
    serving_refresh_s: float = Field(default=0.25, gt=0, le=60)
    interpreter: Literal["auto", "ai-edge-litert", "tflite-runtime"] = "auto"
    auto_migrate: bool = True
    log_level: LogLevel = "INFO"
    log_format: Literal["json", "text"] = "json"
    drift_thresholds: dict[str, Any] = Field(default_factory=dict)
    metrics_enabled: bool = True
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_ca_certs: Path | None = None
    signing_key_path: Path = Path("./var/keys/signing-ed25519.pem")
    scrub_interval_s: float = Field(default=3600.0, ge=0)
    rollout_tick_s: float = Field(default=5.0, ge=0, le=3600)
    inference_log_enabled: bool = True
    inference_log_sample_rate: float = Field(default=0.0, ge=0, le=1)
    inference_log_retention_days: float = Field(default=30.0, gt=0, le=36_500)
    inference_log_queue_size: int = Field(default=10_000, gt=0, le=10_000_000)
    inference_log_batch_size: int = Field(default=500, gt=0, le=100_000)
    inference_log_flush_interval_s: float = Field(default=0.5, gt=0, le=3600)
    inference_log_prune_interval_s: float = Field(default=300.0, ge=0)
    inference_log_process: bool = True

    @field_validator(
        "admin_keys", "enrollment_tokens", "inference_keys", "runner_keys", mode="before"
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("interpreter", mode="before")
    @classmethod
    def _interpreter_spelling(cls, value: Any) -> Any:
        """Every spelling the CLI's ``--interpreter`` accepts (``litert``, ``tflite``, …)."""
        from edgefleet.interpreters import canonical_interpreter

        if isinstance(value, str):
            return canonical_interpreter(value) or "auto"
        return value

    @field_validator("admin_keys", "enrollment_tokens", "inference_keys", "runner_keys")
    @classmethod
    def _non_empty(cls, keys: list[SecretStr]) -> list[SecretStr]:
        return check_key_lengths(keys)


def check_key_lengths(keys: list[SecretStr]) -> list[SecretStr]:
    """``keys`` unchanged; ``ValueError`` naming the first (by number, and by name when it has
    one) whose secret has fewer than :data:`MIN_SECRET_CHARS` characters. The validator of
    every key list here, and of the runner's ``inference_keys`` (:mod:`server.runner.settings`).
    """
    for number, key in enumerate(keys, start=1):
        name, sep, secret = key.get_secret_value().partition(":")
        if not sep:  # a bare secret
            name, secret = "", name
        if len(secret) < MIN_SECRET_CHARS:
            named = f" ({name!r})" if name else ""
            raise ValueError(
                f"key {number}{named} has fewer than {MIN_SECRET_CHARS} characters of secret"
            )
    return keys


def describe_invalid(
    exc: ValidationError, prefix: str = "EDGEFLEET_SERVER_", field: str | None = None
) -> str:
    """``exc`` as ``NAME: message`` parts joined by ``; ``, naming each setting by its
    environment variable (``prefix`` + the field) and never showing the value given: settings
    carry secrets, and pydantic's own text quotes the input. ``field`` names the setting when
    ``exc`` comes from validating that one setting's value (e.g. ``batching``'s JSON)."""
    def env_name(loc: Sequence[str]) -> str:
        loc = [field, *loc] if field is not None else list(loc)
        return ".".join([prefix + loc[0].upper(), *loc[1:]])

    return describe_validation(exc, name=env_name, top=prefix.rstrip("_.") if field is None
                               else prefix + field.upper())


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> ServerSettings:
    """Settings from the environment, ``env_file`` (or ``$EDGEFLEET_SERVER_ENV_FILE``) and
    keyword overrides (which win)."""
    path = env_file or os.environ.get("EDGEFLEET_SERVER_ENV_FILE")
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")
    return ServerSettings(_env_file=path, **overrides)  # type: ignore[call-arg]

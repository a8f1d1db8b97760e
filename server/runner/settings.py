"""Runner settings: environment variables prefixed ``EDGEFLEET_RUNNER_``, or a dotenv file.

There is deliberately no database setting: a runner reaches the registry only over REST.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edgefleet.log_level import LogLevel
from server.settings import check_key_lengths

__all__ = ["RunnerSettings", "load_runner_settings"]


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RunnerSettings(BaseSettings):
    """Configuration of one runner process.

    Parameters
    ----------
    registry_url
        The registry server's base URL (``edgefleet server runner --registry`` wins).
    runner_key
        The secret this runner presents (one of the server's ``EDGEFLEET_SERVER_RUNNER_KEYS``).
    signing_public_keys
        The registry's version-signing public keys to trust (base64, comma-separated; shown by
        ``edgefleet server keys list``). Empty: trust on first use, i.e. the first key of the
        first signed version's chain is pinned for the life of the process (a tampered download
        is still refused; a registry that lies about its own key is not detected).
    ca_file
        CA bundle for an HTTPS registry (default: the system's).
    cache_dir
        Where downloaded artifacts are kept, by sha256 (default ``./var/runner-cache``).
    refresh_interval_s
        How often the serving snapshot is polled (default 1 s; a ``304`` when nothing changed).
        An alias move reaches every request that starts ``refresh_interval_s`` plus one poll
        after it was committed.
    request_timeout_s
        Timeout of each request to the registry (default 30 s).
    inference_keys, public_inference
        Who may call the runner: bearer inference keys (``name:secret``, comma-separated; each
        secret at least as long as the server requires of its own, ``MIN_SECRET_CHARS`` of
        :mod:`server.settings`), or anyone when ``public_inference`` is on (default off).
    models
        Models to load at start-up, before the runner reports ready (default none: on demand).
    max_batch, cache_size, threads, interpreter
        Most rows per request (1024), loaded versions kept (8), interpreters per loaded version
        (0: one per core), TFLite interpreter (``auto``).
    drain_s
        After SIGTERM: seconds of answering requests while ``/v2/health/ready`` says 503, so the
        balancer stops sending new ones, before in-flight requests finish and the process exits
        (default 5).
    max_request_bytes
        Body limit of an inference request (default 4 MiB; larger: 413).
    forward_shadow, forward_timeout_s
        Send a request that a shadow rollout samples to the registry server, which answers it
        and logs both answers (default on; :mod:`server.runner.forward`), waiting at most
        ``forward_timeout_s`` (default 10 s) before answering it here without the shadow. Off:
        such requests are answered here and the shadow copy is not run.
    log_level, log_format, metrics_enabled
        Logging (level; ``json`` or ``text``) and ``/metrics`` (default on).
    """

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_RUNNER_", extra="ignore", env_file_encoding="utf-8"
    )

    registry_url: str = "http://127.0.0.1:8000"
    runner_key: SecretStr = SecretStr("")
    signing_public_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ca_file: Path | None = None
    cache_dir: Path = Path("./var/runner-cache")
    refresh_interval_s: float = Field(default=1.0, gt=0, le=3600)
    request_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    inference_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    public_inference: bool = False
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_batch: int = Field(default=1024, gt=0)
    cache_size: int = Field(default=8, gt=0)
    threads: int = Field(default=0, ge=0, le=256)
    interpreter: Literal["auto", "ai-edge-litert", "tflite-runtime"] = "auto"
    drain_s: float = Field(default=5.0, ge=0, le=3600)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    forward_shadow: bool = True
    forward_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    log_level: LogLevel = "INFO"
    log_format: Literal["json", "text"] = "json"
    metrics_enabled: bool = True

    @field_validator("signing_public_keys", "inference_keys", "models", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("inference_keys")
    @classmethod
    def _long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        """The server's own rule for inference keys (:func:`server.settings.check_key_lengths`)."""
        return check_key_lengths(keys)


def load_runner_settings(env_file: str | Path | None = None, **overrides: Any) -> RunnerSettings:
    """Settings from the environment, ``env_file`` (or ``$EDGEFLEET_RUNNER_ENV_FILE``) and
    keyword overrides (which win)."""
    path = env_file or os.environ.get("EDGEFLEET_RUNNER_ENV_FILE")
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")
    given = {k: v for k, v in overrides.items() if v is not None}
    return RunnerSettings(_env_file=path, **given)  # type: ignore[call-arg]

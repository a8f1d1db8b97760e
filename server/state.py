"""What one application instance holds: settings, engine, store, keys, inference service, and
the V2 hot path (:class:`server.inference.serving.Serving` and the device-token cache)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from registry.integrity import report_damage
from registry.signing import Signer
from registry.store import ArtifactStore
from server.drift import ThresholdPolicy
from server.inference.batcher import BatchingSettings
from server.inference.db_source import DatabaseSource
from server.inference.service import InferenceService
from server.inference.serving import Serving
from server.security import NamedKey, TokenCache, parse_keys
from server.settings import ServerSettings

__all__ = ["AppState"]


@dataclass
class AppState:
    """Per-application resources, created by :func:`server.main.create_app`."""

    settings: ServerSettings
    engine: Engine
    store: ArtifactStore
    inference: InferenceService
    serving: Serving
    credentials: TokenCache = field(default_factory=TokenCache)
    admin_keys: list[NamedKey] = field(default_factory=list)
    enrollment_tokens: list[NamedKey] = field(default_factory=list)
    inference_keys: list[NamedKey] = field(default_factory=list)
    runner_keys: list[NamedKey] = field(default_factory=list)
    drift_policy: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    signer: Signer | None = None  # loaded at start-up, after migrations (server.scrubber)

    @classmethod
    def build(cls, settings: ServerSettings, engine: Engine) -> AppState:
        store = ArtifactStore(settings.artifact_dir)
        serving = Serving(
            DatabaseSource(engine, store),
            batching=BatchingSettings.model_validate(settings.batching),
            threads=settings.inference_threads,
            cache_size=settings.inference_cache_size,
            interpreter=settings.interpreter,
            refresh_interval_s=settings.serving_refresh_s,
            max_batch=settings.max_batch,
        )
        credentials = TokenCache()
        serving.table.on_credentials_change.append(credentials.clear)
        return cls(
            settings=settings,
            engine=engine,
            store=store,
            inference=InferenceService(
                store,
                cache_size=settings.inference_cache_size,
                max_batch=settings.max_batch,
                interpreter=settings.interpreter,
                on_damaged=lambda model, version, reason: report_damage(
                    engine, model, version, reason
                ),
            ),
            serving=serving,
            credentials=credentials,
            admin_keys=parse_keys(settings.admin_keys, "admin"),
            enrollment_tokens=parse_keys(settings.enrollment_tokens, "enrol"),
            inference_keys=parse_keys(settings.inference_keys, "app"),
            runner_keys=parse_keys(settings.runner_keys, "runner"),
            drift_policy=ThresholdPolicy.model_validate(settings.drift_thresholds),
        )

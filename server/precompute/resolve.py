"""Which version to run, loaded the way the server loads it (shared by precompute and the worker).

:func:`resolve_target` turns a model and a version or alias into the server's
:class:`server.inference.service.Target`, and :func:`make_service` builds the server's
:class:`server.inference.service.InferenceService` from its settings, so batch jobs and broker
workers load plans through the same loader (and cache) as V2 inference, checks included.
"""

from __future__ import annotations

from sqlmodel import Session

from registry.predictions import ResolvedVersion, resolve_version
from registry.store import ArtifactStore
from server.inference.service import InferenceService, Target
from server.settings import ServerSettings

__all__ = ["make_service", "resolve_target", "target_of"]


def target_of(resolved: ResolvedVersion) -> Target:
    """The server's loading target for a resolved version."""
    v = resolved.version
    return Target(
        model=resolved.model.name,
        version=v.number,
        alias=resolved.alias,
        plan_sha256=v.plan_sha256,
        weights_sha256=v.weights_sha256,
        manifest_sha256=v.manifest_sha256,
    )


def resolve_target(
    session: Session, model: str, *, version: int | None = None, alias: str | None = None
) -> Target:
    """The READY version ``version``, or the one ``alias`` (default ``production``) names now."""
    return target_of(resolve_version(session, model, version=version, alias=alias))


def make_service(settings: ServerSettings, *, cache_size: int = 2) -> InferenceService:
    """An inference service over the settings' artifact store (``cache_size`` loaded plans)."""
    return InferenceService(
        ArtifactStore(settings.artifact_dir),
        cache_size=cache_size,
        max_batch=settings.max_batch,
        interpreter=settings.interpreter,
    )

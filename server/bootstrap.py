"""Bootstrapping a server without HTTP: publish a plan directory straight into the registry.

Used by ``edgefleet server publish`` (and by demos that start from an empty server); it runs
exactly the verification an upload gets (:func:`registry.publish.publish_version`) and signs the
version with the server's key (registered first, in its own transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgefleet.runtime import MANIFEST_FILE, PLAN_FILE, WEIGHTS_FILE
from edgefleet.wire import AliasMove, VersionPublish
from registry import migrate
from registry.aliases import set_alias
from registry.catalog import create_model, get_model
from registry.db import make_engine, session_scope
from registry.errors import InvalidQueryError, NotFoundError
from registry.models import ModelCreate
from registry.publish import UploadedArtifacts, publish_version
from registry.signing import check_apart, open_signer
from registry.store import ArtifactStore
from server.settings import ServerSettings

__all__ = ["parse_metrics", "publish_plan_dir"]


def parse_metrics(items: Sequence[str]) -> dict[str, float]:
    """``["accuracy=0.9", "f1=0.8"]`` → ``{"accuracy": 0.9, "f1": 0.8}``."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise InvalidQueryError(f"metric {item!r}: write name=value") from None
    return out


def publish_plan_dir(
    settings: ServerSettings,
    plan_dir: Path,
    model: str,
    *,
    aliases: Sequence[str] = (),
    metrics: Sequence[str] = (),
    description: str = "",
    actor: str = "cli",
) -> int:
    """Publish ``plan_dir`` as a new version of ``model`` (created when missing); its number."""
    meta = VersionPublish(description=description, metrics=parse_metrics(metrics))
    files = {name: plan_dir / name for name in (PLAN_FILE, MANIFEST_FILE, WEIGHTS_FILE)}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{plan_dir} lacks {', '.join(missing)}")
    check_apart(settings.signing_key_path, settings.artifact_dir)
    store = ArtifactStore(settings.artifact_dir)
    engine = make_engine(settings.database_url)
    try:
        if settings.auto_migrate:
            migrate.upgrade(engine)
        # the key first, in a transaction of its own: its registration takes the audit chain's
        # lock, which must not be held while the publish below waits for the model's row lock
        with session_scope(engine, write=True) as session:
            signer = open_signer(session, settings.signing_key_path)
        with store.staging() as staging, session_scope(engine, write=True) as session:
            staged = {}
            for name, path in files.items():
                with path.open("rb") as f:
                    staged[name] = staging.stage(f, max_bytes=settings.max_upload_bytes)
            try:
                get_model(session, model)
            except NotFoundError:
                create_model(session, ModelCreate(name=model), actor=actor)
            version = publish_version(
                session,
                store,
                model,
                meta,
                UploadedArtifacts(
                    weights=staged[WEIGHTS_FILE],
                    plan=staged[PLAN_FILE],
                    manifest=staged[MANIFEST_FILE],
                ),
                actor=actor,
                interpreter=settings.interpreter,
                signer=signer,
            )
            for alias in aliases:
                set_alias(
                    session,
                    model,
                    alias,
                    AliasMove(version=version.number, reason="published"),
                    actor=actor,
                    default_rollout_percent=settings.canary_rollout_percent,
                )
            return version.number
    finally:
        engine.dispose()

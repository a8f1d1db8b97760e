"""The server's model source: entries from the registry database, artifacts from the store.

:meth:`DatabaseSource.generation` reads the counters the database's triggers bump
(:mod:`registry.serving`, migration 0008); :meth:`DatabaseSource.entry` reads one model's
versions and aliases in two small queries, and its rollout routing snapshot
(:func:`registry.rollouts.routing.build_snapshot`) when it has an active rollout.

:meth:`DatabaseSource.watch_commits` gives this process read-your-writes on top of the
polling bound: after a session on this engine commits a change to a model, version, alias or
device token, the callback runs (the serving table refreshes at once, in the committing thread).
Other processes see the change through the generation counters.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, event, inspect
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col

from registry.errors import DamagedArtifactError
from registry.integrity import report_damage
from registry.models import Alias, Device, Model, ModelVersion, Rollout
from registry.rollouts.routing import build_snapshot
from registry.serving import generations
from registry.store import ArtifactStore
from server.inference.source import Artifacts, ModelEntry, ServedVersion

__all__ = ["DatabaseSource"]

_TOUCHED = "edgefleet_serving_touched"


def _relevant(obj: object) -> bool:
    """Whether flushing ``obj`` may change what the serving path answers."""
    if isinstance(obj, Device):
        return bool(inspect(obj).attrs.token_hash.history.has_changes())
    return isinstance(obj, Alias | Model | ModelVersion | Rollout)


class DatabaseSource:
    """A :class:`~server.inference.source.ModelSource` over ``engine`` and ``store``."""

    def __init__(self, engine: Engine, store: ArtifactStore) -> None:
        self.engine = engine
        self.store = store
        self._listeners: list[tuple[str, Callable[..., None]]] = []

    def watch_commits(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after a commit on this engine that changed what is served."""

        def flushed(session: OrmSession, _context: Any) -> None:
            if session.get_bind() is self.engine and any(
                _relevant(o) for o in chain(session.new, session.dirty, session.deleted)
            ):
                session.info[_TOUCHED] = True

        def committed(session: OrmSession) -> None:
            if session.info.pop(_TOUCHED, False):
                callback()

        for name, fn in (("after_flush", flushed), ("after_commit", committed)):
            event.listen(OrmSession, name, fn)
            self._listeners.append((name, fn))

    def unwatch(self) -> None:
        """Remove what :meth:`watch_commits` installed."""
        for name, fn in self._listeners:
            event.remove(OrmSession, name, fn)
        self._listeners.clear()

    def generation(self, scope: str) -> int:
        with self.engine.connect() as conn:
            return generations(conn)[scope]

    def generations(self) -> dict[str, int]:
        """Every scope's counter in one query."""
        with self.engine.connect() as conn:
            return generations(conn)

    def entry(self, model: str) -> ModelEntry | None:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(col(Model.id), col(Model.rollout_salt)).where(col(Model.name) == model)
            ).first()
            if found is None:
                return None
            model_id, salt = found
            rows = conn.execute(
                sa.select(
                    col(ModelVersion.id),
                    col(ModelVersion.number),
                    col(ModelVersion.status),
                    col(ModelVersion.plan_sha256),
                    col(ModelVersion.weights_sha256),
                    col(ModelVersion.manifest_sha256),
                ).where(col(ModelVersion.model_id) == model_id)
            ).all()
            aliases = conn.execute(
                sa.select(col(Alias.name), col(Alias.version_id)).where(
                    col(Alias.model_id) == model_id
                )
            ).all()
        with Session(self.engine) as session:
            snapshot = build_snapshot(session, model)
        numbers = {vid: number for vid, number, *_ in rows}
        versions = {
            number: ServedVersion(model, number, str(getattr(status, "value", status)),
                                  plan, weights, manifest)
            for _, number, status, plan, weights, manifest in rows
        }
        return ModelEntry(
            name=model,
            versions=versions,
            aliases={name: numbers[vid] for name, vid in aliases if vid in numbers},
            rollout=snapshot if snapshot.rollout is not None else None,
            salt=salt or "",
        )

    def artifacts(self, version: ServedVersion) -> Artifacts:
        blobs = []
        for kind, sha in (("manifest", version.manifest_sha256), ("plan", version.plan_sha256),
                          ("weights", version.weights_sha256)):
            try:
                blobs.append(self.store.read_verified(sha))
            except DamagedArtifactError as exc:
                raise DamagedArtifactError(f"{kind}: {exc}") from exc
        return Artifacts(manifest=blobs[0], plan=blobs[1], weights=blobs[2])

    def report_damaged(self, model: str, number: int, reason: str) -> None:
        report_damage(self.engine, model, number, reason)

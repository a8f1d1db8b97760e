"""Precomputed predictions: scoring runs committed in chunks, and lookups that follow aliases.

A batch-scoring job (``server.precompute``) calls :func:`start_run` once, then
:func:`commit_chunk` for each chunk of rows it scored and :func:`finish_run` at the end, each in
its own transaction. A chunk's predictions and the run's ``rows_done`` change together, so after a
crash the run says exactly which rows are stored: a restarted job skips ``rows_done`` rows and
scores every key once. :func:`commit_chunk` advances ``rows_done`` only from the value the job
last saw, so two jobs racing on one run cannot both commit the same rows
(:class:`ConflictError` for the loser).

:func:`get_prediction` answers a lookup from the store for the version an alias points at *now*
(or a named version): precompute a candidate first, move the alias, and lookups follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from registry.aliases import get_alias
from registry.catalog import get_model
from registry.errors import ConflictError, InvalidQueryError, NotFoundError
from registry.models import (
    PRODUCTION,
    Model,
    ModelVersion,
    PrecomputeRun,
    PrecomputeStatus,
    Prediction,
    PredictionPublic,
    utcnow,
)
from registry.models.prediction import MAX_KEY_LENGTH
from registry.versions import get_version, manifest_of, require_ready

__all__ = [
    "ResolvedVersion",
    "commit_chunk",
    "finish_run",
    "get_prediction",
    "resolve_version",
    "start_run",
]


@dataclass(frozen=True)
class ResolvedVersion:
    """A READY version, and the alias that led to it (``None`` when it was named)."""

    model: Model
    version: ModelVersion
    alias: str | None


def resolve_version(
    session: Session, model: str, *, version: int | None = None, alias: str | None = None
) -> ResolvedVersion:
    """The READY version ``version``, or the one ``alias`` points at (default ``production``)."""
    if version is not None and alias is not None:
        raise InvalidQueryError("name a version or an alias, not both")
    m = get_model(session, model)
    if version is not None:
        row = get_version(session, m, version)
    else:
        alias = alias or PRODUCTION
        target = get_alias(session, m, alias)
        row = session.exec(select(ModelVersion).where(ModelVersion.id == target.version_id)).one()
    return ResolvedVersion(model=m, version=require_ready(row, m.name), alias=alias)


def start_run(
    session: Session,
    resolved: ResolvedVersion,
    *,
    input_name: str,
    input_sha256: str,
    key_column: str,
    rows_total: int,
    restart: bool = False,
) -> PrecomputeRun:
    """The run of this version over this input: a new one, or the unfinished one to resume.

    A finished run is returned as it is (nothing left to score) unless ``restart``, which starts
    it over from row 0.
    """
    stmt = select(PrecomputeRun).where(
        PrecomputeRun.version_id == resolved.version.id,
        PrecomputeRun.input_sha256 == input_sha256,
        PrecomputeRun.key_column == key_column,
    )
    run = session.exec(stmt.with_for_update()).first()
    now = utcnow()
    if run is None:
        run = PrecomputeRun(
            model_id=resolved.model.id or 0,
            version_id=resolved.version.id or 0,
            input_name=input_name[-1024:],
            input_sha256=input_sha256,
            key_column=key_column,
            rows_total=rows_total,
            status=PrecomputeStatus.RUNNING,
            started_at=now,
            updated_at=now,
        )
        session.add(run)
    elif run.rows_total != rows_total:
        raise ConflictError(
            f"run {run.id} of this input counted {run.rows_total} rows, the file now has "
            f"{rows_total}"
        )
    elif restart:
        run.rows_done, run.status, run.finished_at = 0, PrecomputeStatus.RUNNING, None
        run.started_at = run.updated_at = now
        session.add(run)
    session.flush()
    return run


def commit_chunk(
    session: Session,
    run: PrecomputeRun,
    keys: Sequence[str],
    labels: Sequence[str],
    probabilities: Sequence[Sequence[float]],
) -> int:
    """Store one chunk's predictions and advance ``run.rows_done`` by its length (flushes).

    Returns the new ``rows_done``. A key already predicted by this version is overwritten. Keys
    must be unique within the chunk and at most :data:`MAX_KEY_LENGTH` characters.
    """
    if not len(keys) == len(labels) == len(probabilities):
        raise InvalidQueryError("keys, labels and probabilities differ in length")
    _check_keys(keys)
    seen = run.rows_done
    done = seen + len(keys)
    now = utcnow()
    advanced = session.execute(
        sa.update(PrecomputeRun)
        .where(col(PrecomputeRun.id) == run.id, col(PrecomputeRun.rows_done) == seen)
        .values(rows_done=done, updated_at=now)
    )
    if advanced.rowcount != 1:  # type: ignore[attr-defined]
        raise ConflictError(f"precompute run {run.id} was advanced by another job")
    if keys:
        rows = [
            {
                "model_id": run.model_id,
                "version_id": run.version_id,
                "key": key,
                "label": label,
                "probabilities": [float(p) for p in probs],
                "computed_at": now,
                "run_id": run.id,
            }
            for key, label, probs in zip(keys, labels, probabilities, strict=True)
        ]
        session.execute(_upsert(session), rows)
    session.flush()
    run.rows_done, run.updated_at = done, now
    return done


def _check_keys(keys: Sequence[str]) -> None:
    long = [k for k in keys if len(k) > MAX_KEY_LENGTH]
    if long:
        raise InvalidQueryError(
            f"entity key {long[0][:40]!r}… is longer than {MAX_KEY_LENGTH} characters"
        )
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise InvalidQueryError(f"entity key {dup!r} appears twice in one chunk of the input")


def _upsert(session: Session) -> sa.Insert:
    table = Prediction.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table)
    return stmt.on_conflict_do_update(
        index_elements=["version_id", "key"],
        set_={
            "label": stmt.excluded.label,
            "probabilities": stmt.excluded.probabilities,
            "computed_at": stmt.excluded.computed_at,
            "run_id": stmt.excluded.run_id,
        },
    )


def finish_run(session: Session, run: PrecomputeRun) -> PrecomputeRun:
    """Mark ``run`` DONE (every row committed)."""
    if run.rows_done != run.rows_total:
        raise ConflictError(
            f"precompute run {run.id} has {run.rows_done} of {run.rows_total} rows committed"
        )
    run.status, run.finished_at = PrecomputeStatus.DONE, utcnow()
    run.updated_at = run.finished_at
    session.add(run)
    session.flush()
    return run


def get_prediction(
    session: Session, model: str, key: str, *, version: int | None = None, alias: str | None = None
) -> PredictionPublic:
    """The stored prediction for ``key`` by ``version``, or by the version ``alias`` points at
    now (default ``production``); :class:`NotFoundError` when that version has none."""
    resolved = resolve_version(session, model, version=version, alias=alias)
    row = session.exec(
        select(Prediction).where(
            Prediction.version_id == resolved.version.id, Prediction.key == key
        )
    ).first()
    number = resolved.version.number
    if row is None:
        via = f" ({resolved.alias})" if resolved.alias else ""
        raise NotFoundError(
            f"no precomputed prediction for key {key!r} by version {number}{via} of {model!r}"
        )
    return PredictionPublic(
        model=resolved.model.name,
        key=row.key,
        version=number,
        alias=resolved.alias,
        label=row.label,
        probabilities=list(row.probabilities),
        class_labels=list(manifest_of(resolved.version).output.class_labels),
        computed_at=row.computed_at,
    )

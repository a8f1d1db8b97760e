"""Read and bump the serving generation counters (:class:`registry.models.ServingGeneration`).

The database's triggers (migration 0008) bump them on every change to models, versions,
aliases and device tokens; :func:`bump` is for a change no trigger covers.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlmodel import Session, col

from registry.models.serving import SCOPES, ServingGeneration

__all__ = ["SCOPES", "bump", "generations"]


def generations(conn: Connection | Session) -> dict[str, int]:
    """Every scope's current value (0 for a scope without a row)."""
    rows = conn.execute(
        sa.select(col(ServingGeneration.scope), col(ServingGeneration.value))
    ).all()
    found = {scope: int(value) for scope, value in rows}
    return {scope: found.get(scope, 0) for scope in SCOPES}


def bump(session: Session, scope: str) -> None:
    """Add one to ``scope``'s counter in the caller's transaction (the caller commits)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown generation scope {scope!r}; known: {', '.join(SCOPES)}")
    updated = session.execute(
        sa.update(ServingGeneration)
        .where(col(ServingGeneration.scope) == scope)
        .values(value=col(ServingGeneration.value) + 1)
    )
    if not updated.rowcount:  # type: ignore[attr-defined]
        session.add(ServingGeneration(scope=scope, value=1))

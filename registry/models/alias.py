"""Aliases (``production``, ``canary``, ``shadow``, any name) and their append-only history.

Family: request :class:`edgefleet.wire.AliasMove` / :class:`edgefleet.wire.AliasRollback`,
tables :class:`Alias` (where each alias points now) and :class:`AliasEvent` (every move ever made:
when, from, to, by whom, why), responses :class:`edgefleet.wire.AliasInfo` and
:class:`edgefleet.wire.AliasEventInfo`.

The registry only ever inserts into ``alias_event``; "what did ``production`` point at, at time T"
is the newest event at or before T.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from registry.models.columns import UTCDateTime, utcnow

__all__ = ["CANARY", "PRODUCTION", "SHADOW", "Alias", "AliasEvent"]

PRODUCTION = "production"
CANARY = "canary"
SHADOW = "shadow"


class Alias(SQLModel, table=True):
    __tablename__ = "alias"
    __table_args__ = (sa.UniqueConstraint("model_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    name: str = Field(max_length=64)
    version_id: int = Field(foreign_key="model_version.id", index=True)
    rollout_percent: float | None = None
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_by: str = Field(max_length=128)


class AliasEvent(SQLModel, table=True):
    __tablename__ = "alias_event"
    __table_args__ = (sa.Index("ix_alias_event_model_alias_at", "model_id", "alias", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    alias: str = Field(max_length=64)
    from_version_id: int | None = Field(default=None, foreign_key="model_version.id")
    to_version_id: int | None = Field(default=None, foreign_key="model_version.id")
    rollout_percent: float | None = None
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    actor: str = Field(max_length=128)
    reason: str = Field(default="", max_length=1000)

"""Rollouts: a candidate version moved towards ``production`` by a strategy, under guards.

Family: request :class:`edgefleet.rollouts.RolloutCreate`, tables :class:`Rollout` (the
rollout and where it stands) and :class:`RolloutEvent` (its append-only timeline: every
transition, with the evidence behind it), responses :class:`edgefleet.rollouts.RolloutInfo`
and :class:`edgefleet.rollouts.RolloutEventInfo`.

``active_model_id`` equals ``model_id`` while the rollout is active (pending, running,
awaiting approval) and is NULL once it has ended; its unique constraint is what allows at most
one active rollout per model, on SQLite and PostgreSQL alike (NULLs never collide). ``spec``
holds the validated :class:`~edgefleet.rollouts.RolloutCreate` (steps, guards, variants, ...).
``step`` is the index of the current step; ``phase`` a strategy's position inside it
(``blue_green``: ``prefetch`` then ``switched``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from registry.models.columns import JSONType, UTCDateTime, utcnow

__all__ = ["Rollout", "RolloutEvent"]


class Rollout(SQLModel, table=True):
    __tablename__ = "rollout"

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    active_model_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, sa.ForeignKey("model.id"), unique=True,
                                          nullable=True)
    )
    strategy: str = Field(max_length=32)
    candidate_version_id: int | None = Field(default=None, foreign_key="model_version.id")
    baseline_version_id: int | None = Field(default=None, foreign_key="model_version.id")
    state: str = Field(max_length=32, index=True)
    step: int = 0
    phase: str = Field(default="", max_length=32)
    awaiting: str | None = Field(default=None, max_length=200)
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    step_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    switched_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_by: str = Field(max_length=128)
    reason: str = Field(default="", max_length=1000)
    last_decision: dict[str, Any] | None = Field(default=None, sa_type=JSONType)


class RolloutEvent(SQLModel, table=True):
    __tablename__ = "rollout_event"
    __table_args__ = (sa.Index("ix_rollout_event_rollout_at", "rollout_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id")
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    kind: str = Field(max_length=32)
    from_state: str | None = Field(default=None, max_length=32)
    to_state: str = Field(max_length=32)
    step: int = 0
    actor: str = Field(max_length=128)
    message: str = Field(default="", max_length=2000)
    evidence: dict[str, Any] | None = Field(default=None, sa_type=JSONType)

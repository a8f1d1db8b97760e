"""Models: the named things that have versions (``digits-mlp``, ``wine-mlp``, ...).

Family: :class:`ModelBase` (shared fields) → :class:`ModelCreate` (admin request),
:class:`ModelUpdate` (admin patch), :class:`Model` (table), :class:`ModelPublic` (response).
Tags live in their own table (:class:`ModelTag`) so that searching by tag is an indexed join on
every backend rather than a JSON query.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import field_validator
from sqlmodel import Field, SQLModel

from edgefleet.bounds import check_line, check_text
from edgefleet.wire import NAME_PATTERN
from registry.models.columns import JSONType, UTCDateTime, utcnow

__all__ = ["Model", "ModelBase", "ModelCreate", "ModelPublic", "ModelTag", "ModelUpdate"]

TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
MAX_TAGS = 32


def _clean_tags(tags: list[str] | None) -> list[str] | None:

    if tags is None:
        return None
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    for tag in tags:
        if not re.match(TAG_PATTERN, tag):
            raise ValueError(f"invalid tag {tag!r} (letters, digits, '._:-', at most 64)")
    return sorted(set(tags))


class ModelBase(SQLModel):
    name: str = Field(max_length=128, schema_extra={"pattern": NAME_PATTERN})
    task: str = Field(default="classification", max_length=64)
    description: str = Field(default="", max_length=4000)


class ModelCreate(ModelBase):
    """Register a new model (its versions come later, by upload)."""

    tags: list[str] = Field(default_factory=list)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        return _clean_tags(tags) or []

    @field_validator("task")
    @classmethod
    def _task(cls, task: str) -> str:
        return check_line(task)

    @field_validator("description")
    @classmethod
    def _description(cls, description: str) -> str:
        return check_text(description)


class ModelUpdate(SQLModel):
    """Change a model's description, task or tags; absent fields stay as they are."""

    task: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=4000)
    tags: list[str] | None = None

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str] | None) -> list[str] | None:
        return _clean_tags(tags)

    @field_validator("task")
    @classmethod
    def _task(cls, task: str | None) -> str | None:
        return None if task is None else check_line(task)

    @field_validator("description")
    @classmethod
    def _description(cls, description: str | None) -> str | None:
        return None if description is None else check_text(description)


class Model(ModelBase, table=True):
    __tablename__ = "model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    task: str = Field(default="classification", max_length=64, index=True)
    input_schema: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    output_schema: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    rollout_salt: str = Field(default_factory=lambda: secrets.token_hex(8), max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class ModelTag(SQLModel, table=True):
    __tablename__ = "model_tag"

    model_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("model.id", ondelete="CASCADE"), primary_key=True)
    )
    tag: str = Field(max_length=64, primary_key=True, index=True)


class ModelPublic(ModelBase):
    """A model as the API reports it."""

    tags: list[str] = Field(default_factory=list)
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    aliases: dict[str, int] = Field(default_factory=dict, description="alias -> version")
    latest_version: int | None = None
    created_at: datetime
    updated_at: datetime

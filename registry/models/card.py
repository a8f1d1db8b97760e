"""What a model card holds that the registry does not already know: an operator's notes.

Family: the table :class:`VersionCardNote` (one row per version with notes: the known limitations,
who wrote them and when); request :class:`edgefleet.audit.CardLimitations`. Everything else on a
card is derived (:mod:`registry.cards`).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from registry.models.columns import UTCDateTime, utcnow

__all__ = ["VersionCardNote"]


class VersionCardNote(SQLModel, table=True):
    """The operator-entered part of a version's model card."""

    __tablename__ = "version_card_note"

    version_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("model_version.id", ondelete="CASCADE"), primary_key=True)
    )
    limitations: str = Field(default="", max_length=4000)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_by: str = Field(max_length=200)

"""Precomputed predictions and the batch-scoring runs that wrote them.

Family: the table :class:`Prediction` (one row per entity key and model version, what the
version predicted for it and when), the table :class:`PrecomputeRun` (one row per scoring job
over one input file with one version: how many rows it has committed, so a restarted job goes on
where the last committed chunk ended), and the response :class:`PredictionPublic` (a stored
prediction named by model, version and, when it answered through one, alias).

A key has at most one prediction per version (``uq_prediction_version_id_key``); scoring the key
again with the same version replaces it. Predictions of different versions live side by side, so
a candidate can be precomputed before an alias points at it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from registry.models.columns import JSONType, UTCDateTime, utcnow

__all__ = ["MAX_KEY_LENGTH", "PrecomputeRun", "PrecomputeStatus", "Prediction", "PredictionPublic"]

#: Longest entity key stored (characters).
MAX_KEY_LENGTH = 256


class PrecomputeStatus(StrEnum):
    RUNNING = "RUNNING"
    DONE = "DONE"


class PrecomputeRun(SQLModel, table=True):
    """One scoring job: ``version_id`` over the input whose bytes hash to ``input_sha256``."""

    __tablename__ = "precompute_run"
    __table_args__ = (sa.UniqueConstraint("version_id", "input_sha256", "key_column"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    version_id: int = Field(foreign_key="model_version.id")
    input_name: str = Field(max_length=1024)
    input_sha256: str = Field(max_length=64)
    key_column: str = Field(max_length=128)
    rows_total: int
    rows_done: int = 0
    status: PrecomputeStatus = Field(
        sa_column=sa.Column(
            sa.Enum(
                PrecomputeStatus,
                name="precompute_status",
                native_enum=False,
                length=16,
                create_constraint=True,
            ),
            nullable=False,
        )
    )
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Prediction(SQLModel, table=True):
    """What version ``version_id`` predicted for entity ``key``."""

    __tablename__ = "prediction"
    __table_args__ = (
        sa.UniqueConstraint("version_id", "key"),
        sa.Index("ix_prediction_model_key", "model_id", "key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id")
    version_id: int = Field(foreign_key="model_version.id")
    key: str = Field(max_length=MAX_KEY_LENGTH)
    label: str = Field(max_length=128)
    probabilities: list[float] = Field(sa_type=JSONType)
    computed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    run_id: int | None = Field(default=None, foreign_key="precompute_run.id", index=True)


class PredictionPublic(SQLModel):
    """A stored prediction, named by model and version (and the alias it was looked up by).

    Parameters
    ----------
    model, key
        The model and the entity key.
    version
        The version that computed it.
    alias
        The alias the lookup followed (``None`` when a version was named).
    label
        The most probable class label.
    probabilities
        Class probabilities in the order of ``class_labels``.
    class_labels
        The labels of the version's output.
    computed_at
        When it was computed.
    """

    model: str
    key: str
    version: int
    alias: str | None = None
    label: str
    probabilities: list[float]
    class_labels: list[str]
    computed_at: datetime

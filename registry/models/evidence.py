"""The inference log: one row per answered (or refused) instance of a V2 inference request.

Family: the table :class:`InferenceRecord`, the response :class:`InferenceRecordPublic`, the
feedback request :class:`FeedbackCreate` (items :class:`FeedbackItem`) and its answer
:class:`FeedbackResult`.

A request with ``n`` input rows leaves ``n`` records (``row_index`` 0 … n − 1) sharing its
``request_id``; a refused request (status ≥ 400) leaves one record, ``row_index`` 0, without a
``label``. ``(request_id, row_index)`` is unique
(``uq_inference_record_request_id_row_index``), so a batch written twice is stored once.
``model``, ``version`` and ``alias`` are the names the V2 response carries; ``variant`` names
a rollout arm when one answered. ``inputs`` is kept only for sampled requests,
``input_sha256`` (of the row's ``float32`` bytes) always. ``true_label`` and ``labelled_at``
arrive later through feedback. ``latency_bucket`` is :func:`registry.evidence.latency_bucket`
of ``latency_ms`` (quantiles are computed from it in the database).

Rollups (:mod:`registry.rollups`) keep the same figures per bucket of ``created_at``,
maintained in the transaction that inserts the records (and by feedback):
:class:`InferenceRollup` counts requests, errors (status ≥ 400) and server errors (≥ 500) per
latency bucket per hour (``LATENCY_ROLLUP_S``: a finer grid would hold about as many rows as
the log), and :class:`PredictionRollup` answered instances per predicted label, with how many
of them are labelled and correct, per minute (``ROLLUP_BUCKET_S``, the finest accuracy window).
Their ``variant`` is ``""`` where the record's is ``NULL`` (a unique key needs a value).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from pydantic import Field as PydanticField
from sqlmodel import Field, SQLModel

from edgefleet.bounds import CleanLine, Count, Timestamp
from registry.models.columns import JSONType, UTCDateTime, utcnow

__all__ = [
    "LATENCY_ROLLUP_S",
    "MAX_FEEDBACK_ITEMS",
    "MAX_LABEL_LENGTH",
    "ROLLUP_BUCKET_S",
    "FeedbackCreate",
    "FeedbackItem",
    "FeedbackResult",
    "InferenceRecord",
    "InferenceRecordPublic",
    "InferenceRollup",
    "PredictionRollup",
]

#: Width of a prediction rollup bucket (seconds).
ROLLUP_BUCKET_S = 60
#: Width of a latency (request) rollup bucket (seconds); a multiple of ``ROLLUP_BUCKET_S``.
LATENCY_ROLLUP_S = 3600

#: Longest class label stored (characters).
MAX_LABEL_LENGTH = 128
#: Most feedback items one request may carry.
MAX_FEEDBACK_ITEMS = 1000

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class InferenceRecord(SQLModel, table=True):
    """One instance of one V2 inference request, as answered by ``model`` ``version``."""

    __tablename__ = "inference_record"
    __table_args__ = (
        sa.UniqueConstraint("request_id", "row_index"),
        sa.Index("ix_inference_record_model_created_at", "model", "created_at"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(_BIG_ID, primary_key=True, autoincrement=True)
    )
    request_id: str = Field(max_length=128)
    row_index: int = 0
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True
    )
    model: str = Field(max_length=128)
    version: int
    alias: str | None = Field(default=None, max_length=64)
    variant: str | None = Field(default=None, max_length=64)
    caller: str = Field(max_length=200)
    status: int
    latency_ms: float
    latency_bucket: int
    label: str | None = Field(default=None, max_length=MAX_LABEL_LENGTH)
    confidence: float | None = None
    input_sha256: str | None = Field(default=None, max_length=64)
    inputs: list[float] | None = Field(default=None, sa_type=JSONType)
    true_label: str | None = Field(default=None, max_length=MAX_LABEL_LENGTH)
    labelled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class InferenceRollup(SQLModel, table=True):
    """Requests (records with ``row_index`` 0) of one bucket, per latency bucket."""

    __tablename__ = "inference_rollup"
    __table_args__ = (
        sa.UniqueConstraint("model", "bucket_start", "version", "variant", "latency_bucket"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(_BIG_ID, primary_key=True, autoincrement=True)
    )
    model: str = Field(max_length=128)
    bucket_start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    version: int
    variant: str = Field(default="", max_length=64)
    latency_bucket: int
    requests: int = 0
    #: requests answered with a status >= 400 (client and server errors)
    errors: int = 0
    #: the part of ``errors`` with a status >= 500; the server default 0 is what rows counted
    #: before the column existed hold (migration 0009 fills them in from the log)
    server_errors: int = Field(default=0, sa_column_kwargs={"server_default": sa.text("0")})


class PredictionRollup(SQLModel, table=True):
    """Answered instances of one bucket per predicted label; how many labelled, how many right."""

    __tablename__ = "prediction_rollup"
    __table_args__ = (
        sa.UniqueConstraint("model", "bucket_start", "version", "variant", "label"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(_BIG_ID, primary_key=True, autoincrement=True)
    )
    model: str = Field(max_length=128)
    bucket_start: datetime = Field(sa_type=UTCDateTime, nullable=False)
    version: int
    variant: str = Field(default="", max_length=64)
    label: str = Field(max_length=MAX_LABEL_LENGTH)
    answered: int = 0
    labelled: int = 0
    correct: int = 0


class InferenceRecordPublic(SQLModel):
    """A logged instance (see :class:`InferenceRecord` for the fields)."""

    request_id: str
    row_index: int
    created_at: datetime
    model: str
    version: int
    alias: str | None
    variant: str | None
    caller: str
    status: int
    latency_ms: float
    label: str | None
    confidence: float | None
    input_sha256: str | None
    inputs: list[float] | None
    true_label: str | None
    labelled_at: datetime | None


class FeedbackItem(SQLModel):
    """The true label of row ``row_index`` of request ``request_id``."""

    request_id: CleanLine = PydanticField(min_length=1, max_length=128)
    row_index: Count = 0
    label: CleanLine = PydanticField(min_length=1, max_length=MAX_LABEL_LENGTH)


class FeedbackCreate(SQLModel):
    """Delayed labels, up to :data:`MAX_FEEDBACK_ITEMS` per request.

    ``labelled_at`` (default: when the server receives them) is when the labels were known.
    """

    items: list[FeedbackItem] = PydanticField(min_length=1, max_length=MAX_FEEDBACK_ITEMS)
    labelled_at: Timestamp | None = None


class FeedbackResult(SQLModel):
    """What feedback changed: ``applied`` labels new or different, ``unchanged`` ones already
    stored, and ``unknown`` items naming no logged instance (not yet written, pruned, never
    answered, or a refused request)."""

    applied: int
    unchanged: int
    unknown: list[FeedbackItem]

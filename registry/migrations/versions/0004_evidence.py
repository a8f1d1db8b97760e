"""Evidence: the inference log, delayed-label feedback, device events.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# JSONB on PostgreSQL, JSON elsewhere (as registry.models.columns.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inference_record",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=True),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("caller", sa.String(length=200), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("latency_bucket", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("input_sha256", sa.String(length=64), nullable=True),
        sa.Column("inputs", JSON, nullable=True),
        sa.Column("true_label", sa.String(length=128), nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_record")),
        sa.UniqueConstraint(
            "request_id", "row_index", name=op.f("uq_inference_record_request_id_row_index")
        ),
    )
    with op.batch_alter_table("inference_record", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inference_record_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            "ix_inference_record_model_created_at", ["model", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("inference_record", schema=None) as batch_op:
        batch_op.drop_index("ix_inference_record_model_created_at")
        batch_op.drop_index(batch_op.f("ix_inference_record_created_at"))
    op.drop_table("inference_record")

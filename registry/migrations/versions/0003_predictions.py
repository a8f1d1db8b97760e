"""Precomputed predictions: one row per entity key and version, and the precompute runs.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON elsewhere (as registry.models.columns.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "precompute_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("input_name", sa.String(length=1024), nullable=False),
        sa.Column("input_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_column", sa.String(length=128), nullable=False),
        sa.Column("rows_total", sa.Integer(), nullable=False),
        sa.Column("rows_done", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "RUNNING",
                "DONE",
                name="precompute_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_precompute_run_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_version.id"],
            name=op.f("fk_precompute_run_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_precompute_run")),
        sa.UniqueConstraint(
            "version_id",
            "input_sha256",
            "key_column",
            name=op.f("uq_precompute_run_version_id_input_sha256_key_column"),
        ),
    )
    with op.batch_alter_table("precompute_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_precompute_run_model_id"), ["model_id"], unique=False)

    op.create_table(
        "prediction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("probabilities", JSON, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_prediction_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["precompute_run.id"], name=op.f("fk_prediction_run_id_precompute_run")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_version.id"],
            name=op.f("fk_prediction_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction")),
        sa.UniqueConstraint("version_id", "key", name=op.f("uq_prediction_version_id_key")),
    )
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.create_index("ix_prediction_model_key", ["model_id", "key"], unique=False)
        batch_op.create_index(batch_op.f("ix_prediction_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prediction_run_id"))
        batch_op.drop_index("ix_prediction_model_key")

    op.drop_table("prediction")
    with op.batch_alter_table("precompute_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_precompute_run_model_id"))

    op.drop_table("precompute_run")

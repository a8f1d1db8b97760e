"""Rollouts: the rollout resource and its timeline.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON elsewhere (as registry.models.columns.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "rollout",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("active_model_id", sa.Integer(), nullable=True),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("candidate_version_id", sa.Integer(), nullable=True),
        sa.Column("baseline_version_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("awaiting", sa.String(length=200), nullable=True),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("switched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("last_decision", JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["active_model_id"], ["model.id"], name=op.f("fk_rollout_active_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["baseline_version_id"],
            ["model_version.id"],
            name=op.f("fk_rollout_baseline_version_id_model_version"),
        ),
        sa.ForeignKeyConstraint(
            ["candidate_version_id"],
            ["model_version.id"],
            name=op.f("fk_rollout_candidate_version_id_model_version"),
        ),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], name=op.f("fk_rollout_model_id_model")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout")),
        sa.UniqueConstraint("active_model_id", name=op.f("uq_rollout_active_model_id")),
    )
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollout_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollout_state"), ["state"], unique=False)
    op.create_table(
        "rollout_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("message", sa.String(length=2000), nullable=False),
        sa.Column("evidence", JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollout.id"], name=op.f("fk_rollout_event_rollout_id_rollout")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_event")),
    )
    with op.batch_alter_table("rollout_event", schema=None) as batch_op:
        batch_op.create_index("ix_rollout_event_rollout_at", ["rollout_id", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rollout_event", schema=None) as batch_op:
        batch_op.drop_index("ix_rollout_event_rollout_at")
    op.drop_table("rollout_event")
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_state"))
        batch_op.drop_index(batch_op.f("ix_rollout_model_id"))
    op.drop_table("rollout")

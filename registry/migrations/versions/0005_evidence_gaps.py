"""Evidence gaps: device events and shadow figures from telemetry, rollups of the inference log.

Revision ID: 0005
Revises: 0004

The rollups are filled from the records already logged (:func:`registry.rollups.rebuild`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "device_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(length=1000), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"],
                                name=op.f("fk_device_event_device_id_device")),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"],
                                name=op.f("fk_device_event_model_id_model")),
        sa.ForeignKeyConstraint(["report_id"], ["telemetry_report.id"],
                                name=op.f("fk_device_event_report_id_telemetry_report")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_event")),
    )
    with op.batch_alter_table("device_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_event_report_id"), ["report_id"],
                              unique=False)
        batch_op.create_index("ix_device_event_model_version_at",
                              ["model_id", "version", "at"], unique=False)
        batch_op.create_index("ix_device_event_device_at", ["device_id", "at"], unique=False)
    with op.batch_alter_table("telemetry_report", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shadow_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("shadow_n", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("shadow_agree", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("shadow_confidence_delta_sum", sa.Float(), nullable=True))
    op.create_table(
        "inference_rollup",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("latency_bucket", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_rollup")),
        sa.UniqueConstraint(
            "model", "bucket_start", "version", "variant", "latency_bucket",
            name=op.f("uq_inference_rollup_model_bucket_start_version_variant_latency_bucket"),
        ),
    )
    op.create_table(
        "prediction_rollup",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("answered", sa.Integer(), nullable=False),
        sa.Column("labelled", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_rollup")),
        sa.UniqueConstraint(
            "model", "bucket_start", "version", "variant", "label",
            name=op.f("uq_prediction_rollup_model_bucket_start_version_variant_label"),
        ),
    )
    from registry import rollups  # the tables above, filled from the records logged so far

    rollups.rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_table("prediction_rollup")
    op.drop_table("inference_rollup")
    with op.batch_alter_table("device_event", schema=None) as batch_op:
        batch_op.drop_index("ix_device_event_device_at")
        batch_op.drop_index("ix_device_event_model_version_at")
        batch_op.drop_index(batch_op.f("ix_device_event_report_id"))
    op.drop_table("device_event")
    with op.batch_alter_table("telemetry_report", schema=None) as batch_op:
        for name in ("shadow_confidence_delta_sum", "shadow_agree", "shadow_n",
                     "shadow_version"):
            batch_op.drop_column(name)

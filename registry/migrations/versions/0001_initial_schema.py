"""Initial schema: models, versions and metrics, aliases and their history, devices, telemetry.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL, JSON elsewhere (as registry.models.columns.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "model",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=4000), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("input_schema", JSON, nullable=True),
        sa.Column("output_schema", JSON, nullable=True),
        sa.Column("rollout_salt", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
    )
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_name"), ["name"], unique=True)
        batch_op.create_index(batch_op.f("ix_model_task"), ["task"], unique=False)

    op.create_table(
        "model_tag",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_model_tag_model_id_model"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", "tag", name=op.f("pk_model_tag")),
    )
    with op.batch_alter_table("model_tag", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_tag_tag"), ["tag"], unique=False)

    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "READY",
                "FAILED",
                "ARCHIVED",
                name="version_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("status_reason", sa.String(length=1000), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("plan_sha256", sa.String(length=64), nullable=False),
        sa.Column("plan_size", sa.Integer(), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("weights_size", sa.Integer(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("manifest_size", sa.Integer(), nullable=False),
        sa.Column("manifest", JSON, nullable=False),
        sa.Column("description", sa.String(length=4000), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("hyperparameters", JSON, nullable=False),
        sa.Column("training_data_ref", sa.String(length=1024), nullable=True),
        sa.Column("parent_version_id", sa.Integer(), nullable=True),
        sa.Column("federated_run", sa.String(length=128), nullable=True),
        sa.Column("federated_round", sa.Integer(), nullable=True),
        sa.Column("num_clients", sa.Integer(), nullable=True),
        sa.Column("strategy", sa.String(length=128), nullable=True),
        sa.Column("drift_summary", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_model_version_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["parent_version_id"],
            ["model_version.id"],
            name=op.f("fk_model_version_parent_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_version")),
        sa.UniqueConstraint("model_id", "number", name=op.f("uq_model_version_model_id_number")),
    )
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_model_version_federated_run"), ["federated_run"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_model_version_model_id"), ["model_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_model_version_plan_sha256"), ["plan_sha256"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_model_version_status"), ["status"], unique=False)

    op.create_table(
        "alias",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("rollout_percent", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], name=op.f("fk_alias_model_id_model")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_version.id"], name=op.f("fk_alias_version_id_model_version")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias")),
        sa.UniqueConstraint("model_id", "name", name=op.f("uq_alias_model_id_name")),
    )
    with op.batch_alter_table("alias", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alias_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_alias_version_id"), ["version_id"], unique=False)

    op.create_table(
        "alias_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=True),
        sa.Column("rollout_percent", sa.Float(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_version_id"],
            ["model_version.id"],
            name=op.f("fk_alias_event_from_version_id_model_version"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_alias_event_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["to_version_id"],
            ["model_version.id"],
            name=op.f("fk_alias_event_to_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_event")),
    )
    with op.batch_alter_table("alias_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_alias_event_model_alias_at", ["model_id", "alias", "at"], unique=False
        )

    op.create_table(
        "device",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("hardware", JSON, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("assigned_version_id", sa.Integer(), nullable=True),
        sa.Column("running_version_id", sa.Integer(), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token_issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["assigned_version_id"],
            ["model_version.id"],
            name=op.f("fk_device_assigned_version_id_model_version"),
        ),
        sa.ForeignKeyConstraint(["model_id"], ["model.id"], name=op.f("fk_device_model_id_model")),
        sa.ForeignKeyConstraint(
            ["running_version_id"],
            ["model_version.id"],
            name=op.f("fk_device_running_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_device_token_hash")),
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_model_id"), ["model_id"], unique=False)

    op.create_table(
        "version_metric",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_version.id"],
            name=op.f("fk_version_metric_version_id_model_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "name", name=op.f("pk_version_metric")),
    )
    with op.batch_alter_table("version_metric", schema=None) as batch_op:
        batch_op.create_index("ix_version_metric_name_value", ["name", "value"], unique=False)

    op.create_table(
        "telemetry_report",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("inference_local", sa.Integer(), nullable=False),
        sa.Column("inference_fallback", sa.Integer(), nullable=False),
        sa.Column("inference_errors", sa.Integer(), nullable=False),
        sa.Column("latency_ms_p50", sa.Float(), nullable=True),
        sa.Column("latency_ms_p99", sa.Float(), nullable=True),
        sa.Column("eval_n", sa.Integer(), nullable=True),
        sa.Column("eval_accuracy", sa.Float(), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("dropped_reports", sa.Integer(), nullable=False),
        sa.Column("drift", JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["device.id"], name=op.f("fk_telemetry_report_device_id_device")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_telemetry_report_model_id_model")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_version.id"],
            name=op.f("fk_telemetry_report_version_id_model_version"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_report")),
        sa.UniqueConstraint(
            "device_id",
            "idempotency_key",
            name=op.f("uq_telemetry_report_device_id_idempotency_key"),
        ),
    )
    with op.batch_alter_table("telemetry_report", schema=None) as batch_op:
        batch_op.create_index(
            "ix_telemetry_report_device_window", ["device_id", "window_end"], unique=False
        )
        batch_op.create_index(
            "ix_telemetry_report_model_version_window",
            ["model_id", "version_id", "window_end"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("telemetry_report", schema=None) as batch_op:
        batch_op.drop_index("ix_telemetry_report_model_version_window")
        batch_op.drop_index("ix_telemetry_report_device_window")

    op.drop_table("telemetry_report")
    with op.batch_alter_table("version_metric", schema=None) as batch_op:
        batch_op.drop_index("ix_version_metric_name_value")

    op.drop_table("version_metric")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_model_id"))

    op.drop_table("device")
    with op.batch_alter_table("alias_event", schema=None) as batch_op:
        batch_op.drop_index("ix_alias_event_model_alias_at")

    op.drop_table("alias_event")
    with op.batch_alter_table("alias", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alias_version_id"))
        batch_op.drop_index(batch_op.f("ix_alias_model_id"))

    op.drop_table("alias")
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_version_status"))
        batch_op.drop_index(batch_op.f("ix_model_version_plan_sha256"))
        batch_op.drop_index(batch_op.f("ix_model_version_model_id"))
        batch_op.drop_index(batch_op.f("ix_model_version_federated_run"))

    op.drop_table("model_version")
    with op.batch_alter_table("model_tag", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_tag_tag"))

    op.drop_table("model_tag")
    with op.batch_alter_table("model", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_task"))
        batch_op.drop_index(batch_op.f("ix_model_name"))

    op.drop_table("model")

"""Integrity: version signatures and damage marks, signing keys, device refusals and quarantine.

Adds the ``signing_key`` table (every public key the registry ever signed with), the columns
``signature``, ``signing_key_id``, ``verified_at`` and ``damaged_at`` of ``model_version`` and
the status ``DAMAGED``. Device refusals and quarantine are kept by the aggregation, which never
reaches the database (``aggregation.selection.quarantine``); they need no table here.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = ("PENDING", "READY", "FAILED", "ARCHIVED")
_NEW = (*_OLD, "DAMAGED")


def _status(values: Sequence[str]) -> sa.Enum:
    return sa.Enum(*values, name="version_status", native_enum=False, create_constraint=True,
                   length=16)


def _set_status_check(values: Sequence[str]) -> None:
    """Replace the CHECK constraint behind the ``status`` enum (PostgreSQL alters in place)."""
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("model_version", recreate="always") as batch_op:
            batch_op.alter_column("status", existing_type=_status(_OLD if values == _NEW else _NEW),
                                  type_=_status(values), existing_nullable=False)
        return
    name = op.f("ck_model_version_version_status")
    op.drop_constraint(name, "model_version", type_="check")
    allowed = ", ".join(f"'{v}'" for v in values)
    op.create_check_constraint(name, "model_version", f"status IN ({allowed})")


def upgrade() -> None:
    op.create_table(
        "signing_key",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("algorithm", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("endorsed_by", sa.String(length=16), nullable=True),
        sa.Column("endorsement", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_signing_key")),
    )
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signature", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("signing_key_id", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("damaged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_model_version_signing_key_id_signing_key"),
            "signing_key", ["signing_key_id"], ["key_id"],
        )
    _set_status_check(_NEW)


def downgrade() -> None:
    op.execute("UPDATE model_version SET status = 'ARCHIVED' WHERE status = 'DAMAGED'")
    _set_status_check(_OLD)
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_model_version_signing_key_id_signing_key"), type_="foreignkey"
        )
        batch_op.drop_column("damaged_at")
        batch_op.drop_column("verified_at")
        batch_op.drop_column("signing_key_id")
        batch_op.drop_column("signature")
    op.drop_table("signing_key")

"""Server errors in the request rollups: ``inference_rollup.server_errors`` (status >= 500).

Revision ID: 0009
Revises: 0008

``errors`` keeps counting every status >= 400; ``server_errors`` is the part of them >= 500
(the ``error_rate`` guard's ``statuses: "server"``). Existing rows get 0, then those the
inference log still has 5xx requests for are filled in from it: the log and its rollups are
pruned at the same cutoff, so every rollup row's records are still there. Only 5xx requests
are read (a 4xx or 2xx request changes no ``server_errors``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HOUR_S = 3600  # the request rollups' bucket (registry.models.evidence.LATENCY_ROLLUP_S)
_CHUNK = 20_000


def upgrade() -> None:
    with op.batch_alter_table("inference_rollup", schema=None) as batch_op:
        batch_op.add_column(sa.Column("server_errors", sa.Integer(), nullable=False,
                                      server_default=sa.text("0")))
    _fill_in(op.get_bind())


def _fill_in(conn: sa.Connection) -> None:
    """Count the logged 5xx requests per rollup key and set each key's ``server_errors``."""
    from registry.models.evidence import InferenceRecord, InferenceRollup
    from registry.rollups import bucket_floor

    records = InferenceRecord.__table__.c  # type: ignore[attr-defined]
    rollup = InferenceRollup.__table__  # type: ignore[attr-defined]
    counts: Counter[tuple[str, datetime, int, str, int]] = Counter()
    last = 0
    while True:
        rows = conn.execute(
            sa.select(records.id, records.model, records.created_at, records.version,
                      records.variant, records.latency_bucket)
            .where(records.id > last, records.status >= 500, records.row_index == 0)
            .order_by(records.id).limit(_CHUNK)
        ).all()
        if not rows:
            break
        for _, model, created_at, version, variant, bucket in rows:
            counts[(model, bucket_floor(created_at, _HOUR_S), version, variant or "",
                    bucket)] += 1
        last = rows[-1][0]
    if not counts:
        return
    c, bind = rollup.c, sa.bindparam
    conn.execute(
        sa.update(rollup).values(server_errors=bind("n"))
        .where(c.model == bind("k_model"), c.bucket_start == bind("k_start"),
               c.version == bind("k_version"), c.variant == bind("k_variant"),
               c.latency_bucket == bind("k_bucket")),
        [{"k_model": m, "k_start": start, "k_version": v, "k_variant": var, "k_bucket": b,
          "n": n} for (m, start, v, var, b), n in counts.items()],
    )


def downgrade() -> None:
    with op.batch_alter_table("inference_rollup", schema=None) as batch_op:
        batch_op.drop_column("server_errors")

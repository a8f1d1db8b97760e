"""Serving generation counters, bumped by triggers on models, versions, aliases, rollouts and
device tokens.

The V2 hot path caches alias resolution and credential checks in memory and polls these
counters instead (:mod:`server.inference.table`). The triggers bump them in the same
transaction as the change, whoever writes it.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: (trigger name, scope, event, table, condition on OLD/NEW or None)
TRIGGERS: tuple[tuple[str, str, str, str, str | None], ...] = (
    ("alias_ins", "serving", "INSERT", "alias", None),
    ("alias_upd", "serving", "UPDATE", "alias", None),
    ("alias_del", "serving", "DELETE", "alias", None),
    ("version_ins", "serving", "INSERT", "model_version", None),
    ("version_upd", "serving", "UPDATE OF status", "model_version", None),
    ("version_del", "serving", "DELETE", "model_version", None),
    ("model_ins", "serving", "INSERT", "model", None),
    ("model_upd", "serving", "UPDATE OF rollout_salt", "model", None),
    ("model_del", "serving", "DELETE", "model", None),
    ("rollout_ins", "serving", "INSERT", "rollout", None),
    ("rollout_upd", "serving", "UPDATE", "rollout", None),
    ("rollout_del", "serving", "DELETE", "rollout", None),
    ("device_tok", "credentials", "UPDATE OF token_hash", "device",
     "OLD.token_hash IS DISTINCT FROM NEW.token_hash"),
    ("device_del", "credentials", "DELETE", "device", None),
)


def _name(trigger: str) -> str:
    return f"trg_gen_{trigger}"


def _bump(scope: str) -> str:
    """Add one to ``scope``'s counter (creating its row if it was deleted)."""
    return (
        f"INSERT INTO serving_generation (scope, value) VALUES ({scope}, 1) "
        "ON CONFLICT (scope) DO UPDATE SET value = serving_generation.value + 1"
    )


def upgrade() -> None:
    table = op.create_table(
        "serving_generation",
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("value", BIG, nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_serving_generation")),
    )
    op.bulk_insert(table, [{"scope": "serving", "value": 0}, {"scope": "credentials", "value": 0}])
    if op.get_context().dialect.name == "postgresql":
        _postgresql_triggers()
    else:
        _sqlite_triggers()


def _postgresql_triggers() -> None:
    op.execute(
        "CREATE OR REPLACE FUNCTION edgefleet_bump_generation() RETURNS trigger AS $$ "
        f"BEGIN {_bump('TG_ARGV[0]')}; RETURN NULL; END $$ LANGUAGE plpgsql"
    )
    for trigger, scope, event, table, condition in TRIGGERS:
        level = "ROW" if condition else "STATEMENT"
        when = f" WHEN ({condition})" if condition else ""
        op.execute(
            f"CREATE TRIGGER {_name(trigger)} AFTER {event} ON {table} FOR EACH {level}{when} "
            f"EXECUTE FUNCTION edgefleet_bump_generation('{scope}')"
        )


def _sqlite_triggers() -> None:
    for trigger, scope, event, table, condition in TRIGGERS:
        when = f" WHEN {condition.replace('IS DISTINCT FROM', 'IS NOT')}" if condition else ""
        op.execute(
            f"CREATE TRIGGER {_name(trigger)} AFTER {event} ON {table} FOR EACH ROW{when} "
            f"BEGIN {_bump(repr(scope))}; END"
        )


def downgrade() -> None:
    postgresql = op.get_context().dialect.name == "postgresql"
    for trigger, _, _, table, _ in TRIGGERS:
        on = f" ON {table}" if postgresql else ""
        op.execute(f"DROP TRIGGER IF EXISTS {_name(trigger)}{on}")
    if postgresql:
        op.execute("DROP FUNCTION IF EXISTS edgefleet_bump_generation()")
    op.drop_table("serving_generation")

"""The serving generation counters: what the V2 hot path polls instead of querying per request.

One row per scope (``serving``: models, versions, aliases; ``credentials``: device tokens). The
database bumps ``value`` itself, through triggers created by migration 0008, in the same
transaction as the change, so every write path (the API, the CLI, another server process) is
covered. :mod:`registry.serving` reads and bumps it from Python.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

__all__ = ["SCOPES", "ServingGeneration"]

_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: The scopes a generation counter exists for.
SCOPES = ("serving", "credentials")


class ServingGeneration(SQLModel, table=True):
    __tablename__ = "serving_generation"

    scope: str = Field(primary_key=True, max_length=32)
    value: int = Field(default=0, sa_type=_BIG, nullable=False)

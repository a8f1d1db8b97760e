"""Registry tests run against SQLite and PostgreSQL (see ``tests/registry/support.py``)."""

from tests.registry.support import (  # noqa: F401  (fixtures)
    _session_engine,
    db_url,
    engine,
    plan_files,
    postgres,
    store,
)

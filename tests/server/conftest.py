"""Server tests: the app over real HTTP semantics (TestClient), on SQLite and PostgreSQL."""

from tests.registry.support import (  # noqa: F401  (fixtures)
    _session_engine,
    db_url,
    engine,
    plan_files,
    postgres,
    store,
)
from tests.server.broker_support import broker, redis_broker, served_model  # noqa: F401
from tests.server.support import api, client, settings  # noqa: F401  (fixtures)

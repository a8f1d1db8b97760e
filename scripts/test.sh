#!/usr/bin/env bash
# Set up .venv and run the whole test suite: ruff, mypy, pytest (SQLite and PostgreSQL).
#   EDGEFLEET_TEST_POSTGRES_URL  PostgreSQL server for the database tests
#                                (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONDONTWRITEBYTECODE=1
# The database tests need PostgreSQL. Machines of this project start it before a session; if it is
# installed here but stopped, start it (the tests fail with a clear message if it is still missing).
if [ -z "${EDGEFLEET_TEST_POSTGRES_URL:-}" ] && command -v pg_isready >/dev/null \
        && ! pg_isready -q -h 127.0.0.1 -p 5432 && command -v pg_ctlcluster >/dev/null; then
    echo "[test] starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
echo "[test] ruff"; .venv/bin/ruff check .
echo "[test] mypy"; .venv/bin/mypy edgefleet edgefleet_cli authoring server registry aggregation simulation edge_client
echo "[test] pytest"; .venv/bin/python -m pytest "$@"

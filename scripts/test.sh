#!/usr/bin/env bash
# Set up .venv and run the whole test suite: ruff, mypy, pytest (SQLite and PostgreSQL).
#   EDGEFLEET_TEST_POSTGRES_URL  PostgreSQL server for the database tests
#                                (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONDONTWRITEBYTECODE=1
echo "[test] ruff"; .venv/bin/ruff check .
echo "[test] mypy"; .venv/bin/mypy edgefleet authoring server registry aggregation simulation edge_client
echo "[test] pytest"; .venv/bin/python -m pytest "$@"

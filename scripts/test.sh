#!/usr/bin/env bash
# Set up both environments and run the whole test suite: ruff, mypy, pytest in .venv (numpy 2,
# ai-edge-litert; SQLite and PostgreSQL), then the device tests in .venv-tflite (numpy < 2,
# tflite-runtime; see tests/environments.py). Arguments go to the first pytest run only.
#   EDGEFLEET_TEST_POSTGRES_URL  PostgreSQL server for the database tests
#                                (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
#   TFLITE=0                     leave out .venv-tflite and its tests (says so at the end)
#   PYTEST_WORKERS               pytest-xdist workers for the main run (default 2)
#   TFLITE_SERIAL=1              run the .venv-tflite tests after the main run, not beside it
set -euo pipefail
cd "$(dirname "$0")/.."
phase() { echo "[test] $1 (${SECONDS} s since start)"; }
source scripts/setup.sh
phase "environments ready"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONDONTWRITEBYTECODE=1
# Debian tools the tests drive for real: nginx (the topology's balancer), chromium (the dashboard
# in a headless browser), logrotate and systemd-analyze (the agent's service files).
missing=()
for pair in nginx:nginx chromium:chromium logrotate:logrotate systemd-analyze:systemd; do
    command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair##*:}")
done
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[test] installing ${missing[*]} (Debian packages)"
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}") \
        >/tmp/edgefleet-apt.log 2>&1 || echo "[test] apt-get failed (see /tmp/edgefleet-apt.log)"
fi
# TensorFlow Federated's own venv (var/tff-venv) for the reference-backend test, built once
# (its stamp file marks it finished; tff_venv.sh's own check would import TensorFlow, ~20 s).
[ -f "${TFF_VENV:-var/tff-venv}/.tff-installed" ] || bash scripts/tff_venv.sh
phase "TFF venv ready"
# The device tests for .venv-tflite: the plan runtime and format, the agent's tests, and of the
# agent-against-the-real-server tests the one that installs, serves and reports (the others test the
# server's side, which does not depend on the device's interpreter). They use .venv's Python for
# what .venv-tflite lacks (TensorFlow to build plans, the server) and compare its LiteRT with
# tflite-runtime on the same plan (tests/environments.py).
TFLITE_TESTS=(tests/edgefleet/test_runtime.py tests/edgefleet/test_plan.py)
for f in tests/edge_client/test_*.py; do
    [ "$f" = tests/edge_client/test_integration.py ] || TFLITE_TESTS+=("$f")
done
TFLITE_TESTS+=(tests/edge_client/test_integration.py::test_update_serve_and_report)
# The database tests need PostgreSQL. Machines of this project start it before a session; if it is
# installed here but stopped, start it (the tests fail with a clear message if it is still missing).
if [ -z "${EDGEFLEET_TEST_POSTGRES_URL:-}" ] && command -v pg_isready >/dev/null \
        && ! pg_isready -q -h 127.0.0.1 -p 5432 && command -v pg_ctlcluster >/dev/null; then
    echo "[test] starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
# The broker tests need Redis (6379) and NATS JetStream (4222), which these machines also start
# before a session; start whichever is installed but not answering.
if command -v redis-server >/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    echo "[test] starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --logfile /tmp/edgefleet-test-redis.log || true
fi
if [ -x /usr/sbin/nats-server ] && ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    echo "[test] starting NATS (JetStream)"
    mkdir -p /tmp/edgefleet-test-nats
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /tmp/edgefleet-test-nats -l /tmp/edgefleet-test-nats.log || true
    sleep 1
fi
phase ruff; .venv/bin/ruff check .
phase mypy; .venv/bin/mypy edgefleet edgefleet_cli authoring server registry aggregation simulation edge_client
phase "pytest in .venv"; echo "[test] pytest in .venv ($(.venv/bin/python -c 'import numpy; print("numpy", numpy.__version__)'))"
status=0
# The device tests in .venv-tflite run beside the main run (niced, their output in a log printed
# at the end): they fill the cores while the main run's end-to-end tests wait on processes.
# TFLITE_SERIAL=1 runs them after the main run instead.
tflite_pid=""
tflite_log="$(mktemp /tmp/edgefleet-test-tflite.XXXXXX)"
tflite=(env EDGEFLEET_TEST_MAIN_PYTHON="$PWD/.venv/bin/python"
        .venv-tflite/bin/python -m pytest -p no:cacheprovider "${TFLITE_TESTS[@]}")
if [ "${TFLITE:-1}" != 0 ] && [ "${TFLITE_SERIAL:-0}" != 1 ]; then
    echo "[test] pytest in .venv-tflite started beside the main run (log: $tflite_log)"
    nice -n 5 "${tflite[@]}" >"$tflite_log" 2>&1 &
    tflite_pid=$!
    trap 'kill "$tflite_pid" 2>/dev/null || true' INT TERM
fi
# Two workers (pytest-xdist), a test file per worker at a time: the end-to-end tests spend much of
# their time waiting on processes they started, so the second core is not idle. The longest files
# go first (tests/conftest.py, LONGEST_FIRST; --no-loadscope-reorder keeps that order instead of
# xdist's most-tests-first), so no worker is left running a long file alone at the end.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder \
    --durations=30 "$@" || status=$?
phase "pytest in .venv done"
if [ "${TFLITE:-1}" = 0 ]; then
    echo "[test] TFLITE=0: the tflite-runtime tests in .venv-tflite were NOT run"
elif [ -n "$tflite_pid" ]; then
    wait "$tflite_pid" || status=$?
    echo "[test] pytest in .venv-tflite (numpy < 2, tflite-runtime): the device tests"
    cat "$tflite_log"
else
    echo "[test] pytest in .venv-tflite (numpy < 2, tflite-runtime): the device tests"
    "${tflite[@]}" || status=$?
fi
rm -f "$tflite_log"
phase "done"
exit "$status"

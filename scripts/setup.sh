#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install EdgeFleet into it.
# Idempotent: it reinstalls only when pyproject.toml or constraints.txt changed.
#   EXTRAS   which extras to install (default: all,dev)
#   PYTHON   the interpreter to build the venv from (default: python3.11 or python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXTRAS="${EXTRAS:-all,dev}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.edgefleet-installed"
WANT="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$EXTRAS"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    echo "[setup] installing edgefleet[$EXTRAS] (pinned by constraints.txt)"
    LOG="$VENV/install.log"
    if ! "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[$EXTRAS]" >"$LOG" 2>&1; then
        grep -v "^WARNING: Location" "$LOG" >&2; echo "[setup] install failed (log: $LOG)" >&2; exit 1
    fi
    echo "$WANT" > "$STAMP"
fi
# Offline operation of Flower (see README, "Running offline").
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1 \
       FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0

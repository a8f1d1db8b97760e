#!/usr/bin/env bash
# Create (or refresh) the project's two virtual environments and install EdgeFleet into them:
#   .venv         numpy 2, ai-edge-litert and every extra (EXTRAS), pinned by constraints.txt
#   .venv-tflite  a device on tflite-runtime: Python 3.11, numpy < 2, the extras edge-tflite and
#                 test, pinned by constraints-tflite.txt (tflite-runtime 2.14 needs both)
# Idempotent: an environment is reinstalled only when pyproject.toml or its constraints file
# changed, and recreated from scratch when it holds what it must not (an old .venv with numpy < 2
# or tflite-runtime; a .venv-tflite of another Python or with numpy 2).
#   EXTRAS          extras of .venv (default: all,dev)
#   PYTHON          the interpreter .venv is built from (default: python3.11, else python3)
#   PYTHON_TFLITE   the Python 3.11 interpreter .venv-tflite is built from (default: python3.11)
#   TFLITE=0        leave .venv-tflite out (then scripts/test.sh cannot run its tests)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXTRAS="${EXTRAS:-all,dev}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# What decides whether a venv may be updated in place: "PYTHON_VERSION NUMPY TFLITE_RUNTIME"
# ("-" for what is not installed), or nothing when its Python does not run.
_facts() {
    "$1/bin/python" -c 'import sys
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"
print("%d.%d" % sys.version_info[:2], version("numpy"), version("tflite-runtime"))' 2>/dev/null || true
}

# Why the venv $1 must be rebuilt from scratch (nothing if it may be updated in place).
_stale_reason() {
    local py numpy tflite
    [ -x "$1/bin/python" ] || { echo missing; return; }
    read -r py numpy tflite <<<"$(_facts "$1")"
    if [ -z "$py" ]; then echo "its Python does not run"
    elif [ "$1" = .venv ] && [ "$tflite" != - ]; then
        echo "it has tflite-runtime $tflite (numpy 1 only; it lives in .venv-tflite)"
    elif [ "$1" = .venv ] && [[ "$numpy" == 1.* ]]; then echo "it has numpy $numpy, not 2"
    elif [ "$1" = .venv-tflite ] && [ "$py" != 3.11 ]; then echo "it runs Python $py, not 3.11"
    elif [ "$1" = .venv-tflite ] && [[ "$numpy" != 1.* && "$numpy" != - ]]; then
        echo "it has numpy $numpy, not 1"
    fi
}

# _venv DIR PYTHON EXTRAS CONSTRAINTS: install edgefleet[EXTRAS] into DIR unless its stamp says
# it already has exactly this pyproject.toml and CONSTRAINTS.
_venv() {
    local venv="$1" python="$2" extras="$3" constraints="$4" reason
    local stamp="$venv/.edgefleet-installed"
    local want
    want="$(cat pyproject.toml "$constraints" | sha256sum | cut -c1-16)-$extras"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
        return 0
    fi
    reason="$(_stale_reason "$venv")"
    if [ -n "$reason" ]; then
        [ "$reason" = missing ] || { echo "[setup] recreating $venv: $reason"; rm -rf "$venv"; }
        echo "[setup] creating $venv with $("$python" --version)"
        "$python" -m venv "$venv"
    fi
    echo "[setup] installing edgefleet[$extras] into $venv (pinned by $constraints)"
    local log="$venv/install.log"
    if ! "$venv/bin/python" -m pip install -q -c "$constraints" -e ".[$extras]" >"$log" 2>&1; then
        grep -v "^WARNING: Location" "$log" >&2
        echo "[setup] install into $venv failed (log: $log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
}

_venv .venv "$PYTHON" "$EXTRAS" constraints.txt
if [ "${TFLITE:-1}" != 0 ]; then
    PYTHON_TFLITE="${PYTHON_TFLITE:-$(command -v python3.11 || true)}"
    if [ -z "$PYTHON_TFLITE" ]; then
        echo "[setup] .venv-tflite needs Python 3.11 (tflite-runtime 2.14 has no wheel for" \
             "later ones): set PYTHON_TFLITE, or TFLITE=0 to leave it out" >&2
        exit 1
    fi
    _venv .venv-tflite "$PYTHON_TFLITE" edge-tflite,test constraints-tflite.txt
fi
# Offline operation of Flower (see README, "Running offline").
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1 \
       FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0

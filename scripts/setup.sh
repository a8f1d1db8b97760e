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

# A reason to rebuild the venv $1 from scratch ("" when it may be updated in place): the Python
# code in $2 prints one, given the installed distributions' versions.
_stale_reason() {
    [ -x "$1/bin/python" ] || { echo "missing"; return; }
    "$1/bin/python" - "$2" <<'EOF' 2>/dev/null || echo "its Python does not run"
import sys
from importlib import metadata
have = {(d.metadata["Name"] or "").lower().replace("_", "-"): d.version
        for d in metadata.distributions()}
numpy_major = int(have.get("numpy", "0").split(".")[0])
py = sys.version_info[:2]
print(eval("(" + sys.argv[1] + ")") or "")
EOF
}

# _venv DIR PYTHON EXTRAS CONSTRAINTS STALE_CHECK
_venv() {
    local venv="$1" python="$2" extras="$3" constraints="$4" reason
    local stamp="$venv/.edgefleet-installed"
    local want
    want="$(cat pyproject.toml "$constraints" | sha256sum | cut -c1-16)-$extras"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
        return 0
    fi
    reason="$(_stale_reason "$venv" "$5")"
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

_venv .venv "$PYTHON" "$EXTRAS" constraints.txt \
    "'it has tflite-runtime (numpy 1 only; it lives in .venv-tflite)' if 'tflite-runtime' in have
     else f'it has numpy {have[\"numpy\"]}, not 2' if 0 < numpy_major < 2 else ''"
if [ "${TFLITE:-1}" != 0 ]; then
    PYTHON_TFLITE="${PYTHON_TFLITE:-$(command -v python3.11 || true)}"
    if [ -z "$PYTHON_TFLITE" ]; then
        echo "[setup] .venv-tflite needs Python 3.11 (tflite-runtime 2.14 has no wheel for" \
             "later ones): set PYTHON_TFLITE, or TFLITE=0 to leave it out" >&2
        exit 1
    fi
    _venv .venv-tflite "$PYTHON_TFLITE" edge-tflite,test constraints-tflite.txt \
        "f'it runs Python {py[0]}.{py[1]}, not 3.11' if py != (3, 11)
         else f'it has numpy {have[\"numpy\"]}, not 1' if numpy_major >= 2 else ''"
fi
# Offline operation of Flower (see README, "Running offline").
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1 \
       FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0

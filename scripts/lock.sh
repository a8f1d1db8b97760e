#!/usr/bin/env bash
# Regenerate the lock files from fresh resolutions (run after changing pyproject.toml):
#   constraints.txt         .venv: every extra (all,dev), numpy 2, no tflite-runtime
#   constraints-tflite.txt  .venv-tflite: Python 3.11, the extras edge-tflite and test, numpy < 2
# `scripts/lock.sh main` or `scripts/lock.sh tflite` regenerates only one of them.
#   PYTHON          the interpreter for constraints.txt (default: python3.11, else python3)
#   PYTHON_TFLITE   the Python 3.11 interpreter for constraints-tflite.txt (default: python3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH="${1:-both}"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT

# _lock OUT VENV PYTHON EXTRAS CHECK: resolve EXTRAS in a fresh venv, check it (Python code
# printing a problem, given `have` = {name: version}), write its frozen versions to OUT.
_lock() {
    local out="$1" name="$2" python="$3" extras="$4" check="$5" venv="$TMP/$1" problem
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q ".[$extras]" >"$TMP/log" 2>&1 \
        || { grep -v "^WARNING: Location" "$TMP/log" >&2; exit 1; }
    problem="$("$venv/bin/python" - "$check" <<'EOF'
import sys
from importlib import metadata
have = {(d.metadata["Name"] or "").lower().replace("_", "-"): d.version
        for d in metadata.distributions()}
print(eval("(" + sys.argv[1] + ")") or "")
EOF
)"
    [ -z "$problem" ] || { echo "[lock] $out not written: $problem" >&2; exit 1; }
    { echo "# Exact versions $name is tested with ($("$venv/bin/python" --version)," \
           "edgefleet[$extras]; pip install -c $out). Regenerate with scripts/lock.sh."
      "$venv/bin/python" -m pip freeze --exclude edgefleet; } > "$out"
    echo "[lock] $out: $(grep -vc '^#' "$out") packages"
}

if [ "$WHICH" != tflite ]; then
    _lock constraints.txt .venv "${PYTHON:-$(command -v python3.11 || command -v python3)}" all,dev \
        "'tflite-runtime is in it' if 'tflite-runtime' in have
         else f'numpy {have[\"numpy\"]} is not 2' if not have['numpy'].startswith('2.') else ''"
fi
if [ "$WHICH" != main ]; then
    _lock constraints-tflite.txt .venv-tflite "${PYTHON_TFLITE:-$(command -v python3.11)}" edge-tflite,test \
        "'tflite-runtime is missing' if 'tflite-runtime' not in have
         else 'ai-edge-litert is in it' if 'ai-edge-litert' in have
         else f'numpy {have[\"numpy\"]} is not 1' if not have['numpy'].startswith('1.') else ''"
fi

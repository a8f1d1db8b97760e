#!/usr/bin/env bash
# Regenerate constraints.txt from a fresh resolution of every extra (run after changing pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
"${PYTHON:-python3}" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q ".[all,dev]" >"$TMP/log" 2>&1 || { cat "$TMP/log" >&2; exit 1; }
{ echo "# Exact versions this project is tested with (pip install -c constraints.txt). Regenerate with scripts/lock.sh."
  "$TMP/venv/bin/python" -m pip freeze --exclude edgefleet; } > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages"

#!/usr/bin/env bash
# Build the TensorFlow Federated reference backend's own virtual environment (``--backend tff``).
#
# TFF 0.87.0 (the last release) pins TensorFlow 2.14, numpy ~1.25 and jax/jaxlib 0.4.14, which is
# not on the package index, and can never share an environment with current Flower or pydantic 2.
# So it lives in a venv of its own: TFF without its dependencies, then its requirements with
# jax/jaxlib 0.4.13 (TFF imports jax at import time; its TF learning path does not use it).
# About 2.5 GB. Idempotent: a finished venv (stamp file) is left as it is.
#   TFF_VENV   where to build it (default: var/tff-venv; `edgefleet sim run --backend tff` looks
#              there, or at $EDGEFLEET_TFF_PYTHON)
#   PYTHON     a Python 3.9-3.11 interpreter (default: python3.11)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${TFF_VENV:-var/tff-venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP="$VENV/.tff-installed"
if [ -f "$STAMP" ]; then
    echo "[tff] $VENV is ready ($("$VENV/bin/python" -c 'import tensorflow_federated as t; print(t.__version__)' 2>/dev/null || echo '?'))"
    exit 0
fi
mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
echo "[tff] installing tensorflow-federated 0.87.0 into $VENV (about 2.5 GB, a few minutes)"
"${PIP[@]}" --no-deps "tensorflow-federated==0.87.0"
"${PIP[@]}" \
    "absl-py==1.*" "attrs~=23.1" "cachetools~=5.3" "dm-tree==0.1.8" "dp-accounting==0.4.3" \
    "google-vizier==0.1.11" "grpcio~=1.46" "jax==0.4.13" "jaxlib==0.4.13" "ml-dtypes==0.2.*" \
    "numpy~=1.25" "portpicker~=1.6" "scipy~=1.9.3" "tensorflow-model-optimization==0.7.5" \
    "tensorflow-privacy==0.9.0" "tensorflow==2.14.*" "tqdm~=4.64" "typing-extensions==4.5.*" \
    "googleapis-common-protos==1.61.0"
"$VENV/bin/python" - <<'PY'
import tensorflow_federated as tff
print("[tff] tensorflow-federated", tff.__version__, "imports")
PY
touch "$STAMP"

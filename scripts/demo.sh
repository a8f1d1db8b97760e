#!/usr/bin/env bash
# The README's main command: set up .venv, author a digits MLP plan with TensorFlow, train it on
# the device runtime (TFLite, no TensorFlow) and print its per-epoch test accuracy (>= 0.90).
# Extra arguments go to `edgefleet model demo` (e.g. --epochs 20 --out plans/digits-mlp).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/edgefleet model demo "$@"

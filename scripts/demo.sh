#!/usr/bin/env bash
# The README's main command: set up .venv, then run the whole loop on this machine
# (`edgefleet sim fleet`): the server on SQLite, an initial digits plan in production, 4 edge
# agents with their Flower SuperNodes on non-IID shares of the digits, clean traffic; then drift
# injected after start (device 0 brightened, device 3 noisy), the drift controller's federated
# run, its candidate rolled out as a canary and promoted on the devices' evidence, a broken
# (scrambled) candidate rolled back, and a summary (timeline, rollouts with evidence, accuracy
# before/after per device). A few minutes on 2 cores; everything on 127.0.0.1 under
# ./var/fleet-<timestamp>; nothing is left running. Extra arguments go to `edgefleet sim fleet`
# (e.g. --agents 3 --rounds 2, or --no-loop for the federated run alone).
set -euo pipefail
cd "$(dirname "$0")/.."
# the demo runs in .venv alone: the tflite-runtime venv (which needs python3.11) is not built
export TFLITE="${TFLITE:-0}"
source scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/edgefleet sim fleet "$@"

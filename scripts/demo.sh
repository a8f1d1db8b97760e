#!/usr/bin/env bash
# The README's main command: set up .venv, then run the first whole fleet on this machine
# (`edgefleet sim fleet`): the server on SQLite, an initial digits plan trained briefly and
# registered, 4 edge agents with their Flower SuperNodes, each with a different non-IID share of
# the digits (device 0 brightened, device 3 noisy), local inference traffic, 3 federated rounds
# that publish new versions, and a summary (versions, accuracy per round, drift per device).
# A few minutes on 2 cores; everything on 127.0.0.1 under ./var/fleet-<timestamp>; nothing is
# left running. Extra arguments go to `edgefleet sim fleet` (e.g. --agents 3 --rounds 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
.venv/bin/edgefleet sim fleet "$@"

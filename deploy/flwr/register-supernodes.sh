#!/bin/sh
# Register every SuperNode public key in CERTS_DIR/supernodes (default /certs/supernodes) with the
# SuperLink of the `fleet` connection (FLWR_HOME/config.toml), as `--enable-supernode-auth` needs.
# A key that is already registered is fine: re-running after adding a device registers only the
# new one. Exits non-zero when any other registration fails.
set -eu
dir="${CERTS_DIR:-/certs}/supernodes"
connection="${FLWR_CONNECTION:-fleet}"
status=0
for pub in "$dir"/*.pub; do
    [ -e "$pub" ] || { echo "no SuperNode keys in $dir" >&2; exit 1; }
    if out=$(flwr supernode register "$pub" "$connection" 2>&1); then
        echo "registered $(basename "$pub" .pub): $out"
    elif printf '%s' "$out" | grep -qi "already"; then
        echo "$(basename "$pub" .pub) was registered before"
    else
        echo "registering $pub failed: $out" >&2
        status=1
    fi
done
exit "$status"

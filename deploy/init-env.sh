#!/bin/sh
# Write deploy/env/{postgres,server,runner,fl,device}.env (or into DIR) from the *.env.example files
# with fresh random secrets; files that exist are kept. docker-compose.yml reads them (env_file).
# The runners' inference key is the servers' (a runner sends shadow-sampled requests to a server
# with the caller's key) and their runner key is one of the servers' runner keys.
#   sh deploy/init-env.sh [DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="${1:-$here/env}"
mkdir -p "$out"
rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
pg=$(rand); admin=$(rand); enrol=$(rand); infer=$(rand); runner=$(rand)
write() {  # write NAME CONTENT: only when missing, owner-readable only
    if [ -e "$out/$1" ]; then echo "keeping $out/$1"; return; fi
    umask 077
    printf '%s\n' "$2" > "$out/$1"
    echo "wrote $out/$1"
}
write postgres.env "POSTGRES_USER=edgefleet
POSTGRES_DB=edgefleet
POSTGRES_PASSWORD=$pg"
write server.env "EDGEFLEET_SERVER_DATABASE_URL=postgresql+psycopg://edgefleet:$pg@db:5432/edgefleet
EDGEFLEET_SERVER_ADMIN_KEYS=ops:$admin
EDGEFLEET_SERVER_ENROLLMENT_TOKENS=fleet:$enrol
EDGEFLEET_SERVER_INFERENCE_KEYS=apps:$infer
EDGEFLEET_SERVER_RUNNER_KEYS=runners:$runner"
# a server.env kept from before: the runners take its keys (and get a runner key added to it)
server_env() { sed -n "s/^EDGEFLEET_SERVER_$1=[^:]*://p" "$out/server.env" | head -n 1; }
infer=$(server_env INFERENCE_KEYS)
if [ -z "$(server_env RUNNER_KEYS)" ]; then
    printf 'EDGEFLEET_SERVER_RUNNER_KEYS=runners:%s\n' "$runner" >> "$out/server.env"
    echo "added EDGEFLEET_SERVER_RUNNER_KEYS to $out/server.env"
fi
runner=$(server_env RUNNER_KEYS); runner=${runner%%,*}  # the first runner key
write runner.env "EDGEFLEET_RUNNER_RUNNER_KEY=$runner
EDGEFLEET_RUNNER_INFERENCE_KEYS=apps:$infer"
write fl.env "EDGEFLEET_ADMIN_KEY=$admin"
write device.env "EDGEFLEET_ENROLLMENT_TOKEN=$enrol"

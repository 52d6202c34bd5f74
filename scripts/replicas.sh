#!/usr/bin/env bash
# Runs the docker-compose.yml topology as local processes, for machines without Docker: Redis,
# the fake amoCRM (429 above 7 requests a second), and two gateway replicas sharing Redis.
#   scripts/replicas.sh          then query http://127.0.0.1:8080/graphql or :8082/graphql
# Ctrl-C stops everything. Ports: REPLICA_A_PORT (8080), REPLICA_B_PORT (8082),
# FAKE_PORT (8081), REDIS_PORT (6390: not 6379, which a local Redis may hold).
set -euo pipefail
cd "$(dirname "$0")/.."

REPLICA_A_PORT=${REPLICA_A_PORT:-8080}
REPLICA_B_PORT=${REPLICA_B_PORT:-8082}
FAKE_PORT=${FAKE_PORT:-8081}
REDIS_PORT=${REDIS_PORT:-6390}

command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --locked --quiet
bin=target/release/amocrm-gateway

trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT INT TERM

wait_for_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null &
wait_for_port "$REDIS_PORT"

GATEWAY_LISTEN="127.0.0.1:$FAKE_PORT" \
GATEWAY_RATE_LIMIT=7 \
GATEWAY_LATENCY=50ms \
    "$bin" fake-amocrm &
wait_for_port "$FAKE_PORT"

# The same settings as the replicas in docker-compose.yml.
export AMOCRM_BASE_URL="http://127.0.0.1:$FAKE_PORT"
export AMOCRM_ACCESS_TOKEN=demo-admin-token
export GATEWAY_ALLOW_ANONYMOUS=true
export GATEWAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export GATEWAY_REPLICAS_HINT=2
export GATEWAY_WEBHOOK_SECRET=demo-webhook-secret
export GATEWAY_ADMIN_TOKEN=demo-admin-secret
export GATEWAY_CACHE_TTL=60s

GATEWAY_LISTEN="127.0.0.1:$REPLICA_A_PORT" "$bin" &
GATEWAY_LISTEN="127.0.0.1:$REPLICA_B_PORT" "$bin" &
wait_for_port "$REPLICA_A_PORT"
wait_for_port "$REPLICA_B_PORT"

echo "replica A: http://127.0.0.1:$REPLICA_A_PORT/graphiql"
echo "replica B: http://127.0.0.1:$REPLICA_B_PORT/graphiql"
echo "webhooks:  http://127.0.0.1:$REPLICA_A_PORT/webhooks/amocrm/demo-webhook-secret"
echo "Ctrl-C stops all of them."
wait

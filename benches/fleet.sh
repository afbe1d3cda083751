#!/usr/bin/env bash
# Fleet mode (issue #11): a redis-server (Debian package) on a free loopback port in a temp dir,
# the mock upstream, two ollama-pool instances on that Redis (A, B) and one on SQLite (S).
# 1. Propagation: examples/fleet_latency disables/enables a key on A N times and times B's
#    notice of each change (GET /admin/events) — p50, p99, max.
# 2. Fleet on vs off: wrk (non-streaming chat, 64 connections) against A and S in alternating
#    rounds; prints req/s of each and A/S.
#
#    With LIMITED=1 the client token has an rpm and a daily budget (too high to refuse
#    anything): A then shares its counts through Redis (fleet::limits) and S counts alone, so
#    A/S is the cost of fleet-wide limits.
#
#   [LIMITED=1] benches/fleet.sh [SECONDS_PER_RUN=5] [ROUNDS=3] [CHANGES=200]
# Needs: redis-server, wrk. Every load run is bounded by SECONDS_PER_RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-3}
CHANGES=${3:-200}
for tool in redis-server wrk; do
  command -v "$tool" >/dev/null || { echo "fleet.sh: $tool is missing (apt-get install redis-server wrk)" >&2; exit 2; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ollama-pool-target}"
cargo build --release --quiet --bin ollama-pool --example mock_upstream --example fleet_latency
BIN=$CARGO_TARGET_DIR/release
DIR=$(mktemp -d)
REDIS_PORT=18380 MOCK_PORT=18381
ADMIN_TOKEN=bench-admin-token-0123456789
export TOKEN=bench-client-token-123  # read by benches/chat.lua
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$DIR"; }
PIDS=()
trap cleanup EXIT
redis-server --port $REDIS_PORT --bind 127.0.0.1 --dir "$DIR" --save '' --appendonly yes >/dev/null & PIDS+=($!)
"$BIN/examples/mock_upstream" --listen 127.0.0.1:$MOCK_PORT 2>/dev/null & PIDS+=($!)
for i in $(seq -w 0 99); do echo "bench-upstream-key-$i-xxxxxxxxxxxxxxxx"; done > "$DIR/keys.txt"
LIMITS=""
[ "${LIMITED:-0}" = 1 ] && LIMITS=", rpm: 1000000000, daily_tokens: 1000000000000"
KEY_ID=$(printf '%s' "bench-upstream-key-00-xxxxxxxxxxxxxxxx" | sha256sum | cut -c1-12)

# instance NAME PORT ADMIN_PORT STORE_YAML
instance() {
  mkdir -p "$DIR/$1" && cp "$DIR/keys.txt" "$DIR/$1/"
  cat > "$DIR/$1/pool.yaml" <<YAML
listen: ["127.0.0.1:$2"]
threads: 2
upstream: {url: "http://127.0.0.1:$MOCK_PORT", health_check_interval: 0s}
keys: {files: [keys.txt]}
clients: {tokens: [{name: bench, token: "$TOKEN"$LIMITS}]}
admin: {listen: "127.0.0.1:$3", token: "$ADMIN_TOKEN"}
store: $4
fleet: {instance: $1}
server: {grace_period: 0s, shutdown_timeout: 1s, pid_file: $DIR/$1/pool.pid, upgrade_sock: $DIR/$1/upgrade.sock}
YAML
  RUST_LOG=warn "$BIN/ollama-pool" serve -c "$DIR/$1/pool.yaml" > "$DIR/$1/pool.log" 2>&1 & PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$3/readyz" >/dev/null && return; sleep 0.1; done
  echo "fleet.sh: instance $1 did not get ready" >&2; cat "$DIR/$1/pool.log" >&2; exit 1
}
for _ in $(seq 50); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && break; sleep 0.1; done
instance a 18382 18383 "{kind: redis, url: \"redis://127.0.0.1:$REDIS_PORT/0\"}"
instance b 18384 18385 "{kind: redis, url: \"redis://127.0.0.1:$REDIS_PORT/0\"}"
instance s 18386 18387 "{path: $DIR/s/pool.db}"

echo "propagation A -> B, $CHANGES disables + $CHANGES enables:"
"$BIN/examples/fleet_latency" --a http://127.0.0.1:18383 --b http://127.0.0.1:18385 --token "$ADMIN_TOKEN" --key "$KEY_ID" -n "$CHANGES"

declare -A sum
for r in $(seq "$ROUNDS"); do
  for t in a s; do
    port=18382; [ $t = s ] && port=18386
    rps=$(wrk -t2 -c64 -d"${SECS}s" -s benches/chat.lua "http://127.0.0.1:$port/v1/chat/completions" | awk '/Requests\/sec/ {print $2}')
    sum[$t]=$(awk -v a="${sum[$t]:-0}" -v b="$rps" 'BEGIN { print a + b }')
    echo "round $r: $t $rps req/s"
  done
done
awk -v a="${sum[a]}" -v s="${sum[s]}" -v n="$ROUNDS" 'BEGIN {
  printf "means: fleet (redis) %.0f req/s, sqlite %.0f req/s, fleet/sqlite %.3f\n", a / n, s / n, a / s }'

#!/usr/bin/env bash
# Memory with many keys (issue #14 item 3): RSS of ollama-pool idle with N keys (default
# 100,000, from a key file, SQLite store) against the same process with no keys, sampled from
# /proc after it is ready and again once the allocator has settled; the difference per key.
#
#   benches/memory.sh [KEYS=100000] [SETTLE_SECONDS=15]
#   BIN=path/to/ollama-pool benches/memory.sh ...   measures another build (e.g. the previous one)
# Bounded: each process runs at most SETTLE_SECONDS plus its start.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
SETTLE=${2:-15}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ollama-pool-target}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin ollama-pool --example mock_upstream
  BIN=$CARGO_TARGET_DIR/release/ollama-pool
fi
MOCK=$CARGO_TARGET_DIR/release/examples/mock_upstream
[ -x "$MOCK" ] || cargo build --release --quiet --example mock_upstream
DIR=$(mktemp -d)
MOCK_PORT=18190 POOL_PORT=18191 ADMIN_PORT=18192
cleanup() { kill "${MOCK_PID:-}" "${POOL_PID:-}" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
"$MOCK" --listen 127.0.0.1:$MOCK_PORT 2>/dev/null & MOCK_PID=$!

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# run NAME KEYFILE -> sets READY (kB), SETTLED (kB), LOAD_MS
run() {
  local d=$DIR/$1; mkdir -p "$d"; cp "$2" "$d/keys.txt"
  cat > "$d/pool.yaml" <<YAML
listen: ["127.0.0.1:$POOL_PORT"]
threads: 2
upstream: {url: "http://127.0.0.1:$MOCK_PORT", health_check_interval: 0s}
keys: {files: [keys.txt]}
store: {path: $d/pool.db}
clients: {tokens: [{name: bench, token: "bench-client-token-123"}]}
admin: {listen: "127.0.0.1:$ADMIN_PORT", token: "bench-admin-token-0123456789"}
server: {grace_period: 0s, shutdown_timeout: 1s, pid_file: $d/pool.pid, upgrade_sock: $d/upgrade.sock}
YAML
  local probe=readyz; [ -s "$2" ] || probe=healthz  # with no keys it is never ready
  local t0; t0=$(date +%s%N)
  RUST_LOG=warn "$BIN" serve -c "$d/pool.yaml" > "$d/pool.log" 2>&1 & POOL_PID=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$ADMIN_PORT/$probe" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$ADMIN_PORT/$probe" >/dev/null || { echo "memory.sh: $1 did not get ready" >&2; cat "$d/pool.log" >&2; exit 1; }
  local load_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local ready; ready=$(rss_kb $POOL_PID)
  sleep "$SETTLE"
  local settled; settled=$(rss_kb $POOL_PID)
  kill $POOL_PID; wait $POOL_PID 2>/dev/null || true; POOL_PID=
  READY=$ready SETTLED=$settled LOAD_MS=$load_ms
}

: > "$DIR/none.txt"
for i in $(seq 1 "$N"); do printf 'mem-bench-key-%08d-%s\n' "$i" xxxxxxxxxxxxxxxxxxxxxxxx; done > "$DIR/many.txt"
run none "$DIR/none.txt"; r0=$READY s0=$SETTLED l0=$LOAD_MS
run many "$DIR/many.txt"; r1=$READY s1=$SETTLED l1=$LOAD_MS
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
printf '%-12s %12s %12s %10s\n' keys "ready MiB" "settled MiB" "ready in"
printf '%-12s %12s %12s %8s ms\n' 0 "$(mib $r0)" "$(mib $s0)" "$l0"
printf '%-12s %12s %12s %8s ms\n' "$N" "$(mib $r1)" "$(mib $s1)" "$l1"
awk -v a="$s0" -v b="$s1" -v n="$N" 'BEGIN { printf "per key (settled): %.0f bytes\n", (b - a) * 1024 / n }'

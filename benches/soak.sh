#!/usr/bin/env bash
# Soak (issue #10): ollama-pool under steady mixed load and mixed upstream faults for MINUTES,
# sampling its RSS and open file descriptors once a minute. Both must be flat after warm-up:
# a leak of memory, connections or fds shows as a rising column.
#
#   benches/soak.sh [MINUTES=30] [FAULT_MIX=429:1,503:1,reset:1,cut:1,slow:2]
#
# Load each minute: wrk non-streaming chat (2 threads, 16 connections) and examples/stream_load
# SSE streams (16 concurrent), both for the whole minute. Upstream: examples/mock_upstream
# answering after 20 ms (streams: 20 events 5 ms apart) with the fault mix (percent of
# requests), 40 keys of which 4 are revoked (401 -> parked invalid). The upstream latency keeps
# the load steady (~700 chats/s) rather than flat out: at full speed every key would see a 429
# each second and the pool would be parked, which tests the storm guard, not leaks. Prints one row a
# minute (req/s, non-2xx, streams complete and broken, usable keys, storm, RSS, fds, upstream
# connections) and a verdict comparing the end of the run with the end of the warm-up (minute
# 12 for runs of 15 minutes or more: see below). Exit status 3 when RSS or fds grew.
# Needs wrk (Debian package). Loopback only; every load run is bounded by the minute.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
MIX=${2:-429:1,503:1,reset:1,cut:1,slow:2}
command -v wrk >/dev/null || { echo "soak.sh needs wrk (apt-get install wrk)" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ollama-pool-target}"
cargo build --release --quiet --bin ollama-pool --example mock_upstream --example stream_load
BIN=$CARGO_TARGET_DIR/release

DIR=$(mktemp -d)
MOCK_PORT=18280 POOL_PORT=18281 ADMIN_PORT=18283
TOKEN=soak-client-token-1234567
cleanup() {
  kill "${WRK_PID:-}" "${STREAM_PID:-}" "${MOCK_PID:-}" "${POOL_PID:-}" 2>/dev/null || true
  [ -n "${SOAK_KEEP_LOG:-}" ] && cp "$DIR/pool.log" "$SOAK_KEEP_LOG"
  rm -rf "$DIR"
}
trap cleanup EXIT

for i in $(seq -w 0 35); do echo "soak-upstream-key-$i-xxxxxxxxxxxxxxxx"; done > "$DIR/keys.txt"
for i in $(seq -w 36 39); do echo "soak-upstream-key-$i-xxxxxxxxxxxx-bad"; done >> "$DIR/keys.txt"
cat > "$DIR/pool.yaml" <<YAML
listen: ["127.0.0.1:$POOL_PORT"]
threads: 2
upstream: {url: "http://127.0.0.1:$MOCK_PORT", health_check_interval: 5s}
keys: {files: [keys.txt]}
clients: {tokens: [{name: soak, token: "$TOKEN"}]}
admin: {listen: "127.0.0.1:$ADMIN_PORT", token: "soak-admin-token-0123456789"}
store: {path: $DIR/pool.db}
server: {grace_period: 0s, shutdown_timeout: 1s, pid_file: $DIR/pool.pid, upgrade_sock: $DIR/upgrade.sock}
YAML

"$BIN/examples/mock_upstream" --listen 127.0.0.1:$MOCK_PORT --latency-ms 20 --chunks 20 --chunk-delay-ms 5 --fault-mix "$MIX" \
  2>/dev/null & MOCK_PID=$!
RUST_LOG=${RUST_LOG:-warn} "$BIN/ollama-pool" serve -c "$DIR/pool.yaml" > "$DIR/pool.log" 2>&1 & POOL_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$POOL_PORT/healthz" >/dev/null && break; sleep 0.1; done

export TOKEN  # read by benches/chat.lua

rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$POOL_PID/status"; }
fds() { find "/proc/$POOL_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
stats() { curl -sf -H "authorization: Bearer soak-admin-token-0123456789" "http://127.0.0.1:$ADMIN_PORT/admin/stats"; }
usable() { stats | grep -o '"usable":[0-9]*' | cut -d: -f2; }
storm() { stats | grep -q '"storm_since":null' && echo no || echo YES; }
upstream_conns() { # established connections from the proxy to the mock
  awk -v p="$(printf '%04X' "$MOCK_PORT")" 'NR > 1 { split($3, r, ":"); if (r[2] == p && $4 == "01") n++ } END { print n + 0 }' /proc/net/tcp
}

echo "soak: $MINUTES min, fault mix $MIX, 40 keys (4 revoked); $(nproc) cores"
printf "%6s %10s %9s %9s %9s %9s %7s %6s %9s %6s %9s\n" minute "chat r/s" non-2xx errors streams broken usable storm "RSS MiB" fds upstream
declare -a RSS FDS
for m in $(seq "$MINUTES"); do
  wrk -t2 -c16 -d60s -s benches/chat.lua "http://127.0.0.1:$POOL_PORT/v1/chat/completions" > "$DIR/wrk.out" 2>&1 & WRK_PID=$!
  "$BIN/examples/stream_load" --url "http://127.0.0.1:$POOL_PORT" -c 16 -d 60 --token "$TOKEN" > "$DIR/stream.out" 2>&1 & STREAM_PID=$!
  wait "$WRK_PID" "$STREAM_PID" || true
  if ! kill -0 "$POOL_PID" 2>/dev/null; then echo "ollama-pool exited during minute $m:" >&2; tail -20 "$DIR/pool.log" >&2; exit 1; fi
  rps=$(awk '/Requests\/sec/ {print $2}' "$DIR/wrk.out")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$DIR/wrk.out"); non2xx=${non2xx:-0}
  errs=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$DIR/wrk.out"); errs=${errs:-0}
  field() { tr ' ' '\n' < "$DIR/stream.out" | awk -F= -v k="$1" '$1 == k {print $2}'; }
  streams=$(field requests) broken=$(field broken)
  RSS[$m]=$(rss); FDS[$m]=$(fds)
  printf "%6s %10s %9s %9s %9s %9s %7s %6s %9s %6s %9s\n" "$m" "$rps" "$non2xx" "$errs" "${streams:-?}" "${broken:-?}" \
    "$(usable)" "$(storm)" "${RSS[$m]}" "${FDS[$m]}" "$(upstream_conns)"
done

# Warm-up: pingora keeps a timer for every upstream read until its deadline, so RSS rises for
# one upstream.read_timeout (600 s by default) and levels off in the next two minutes
# (benches/README.md). Judge from minute 12 on when the run is long enough, else from minute 3
# (an early look only: RSS still rises then).
if [ "$MINUTES" -ge 15 ]; then warm=12; else warm=$(( MINUTES >= 3 ? 3 : 1 )); fi
awk -v r0="${RSS[$warm]}" -v r1="${RSS[$MINUTES]}" -v f0="${FDS[$warm]}" -v f1="${FDS[$MINUTES]}" -v w="$warm" -v m="$MINUTES" 'BEGIN {
  printf "\nfrom minute %d to %d: RSS %.1f -> %.1f MiB (%+.1f %%), fds %d -> %d\n", w, m, r0, r1, (r1 - r0) * 100 / r0, f0, f1
  flat = (r1 - r0) <= r0 * 0.10 && f1 - f0 <= 16
  print (flat ? "verdict: flat (RSS within 10 %, fds within 16)" : "verdict: GROWING")
  exit (flat ? 0 : 3)
}'

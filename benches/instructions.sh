#!/usr/bin/env bash
# User-space instructions per proxied request (issue #14): a count that, unlike req/s on this
# shared box, repeats to within ~0.5 % between runs, so a change of 1-3 % of our own work can be
# seen. Runs one build under valgrind's callgrind in front of the mock upstream, warms up
# (wrk -c8, 3 s), zeroes the counts, runs wrk -c8 for SECONDS, dumps, and prints
# instructions / requests. The kernel's share is not in it: it is a measure of user-space work,
# not of time. Also takes the bare pingora example (examples/bare_pingora.rs) as BIN.
#
#   benches/instructions.sh [BIN=target/release/ollama-pool] [SECONDS=8]
#   KEEP=dir benches/instructions.sh ...   keeps the callgrind output (callgrind_annotate it)
# Needs: valgrind and wrk (Debian packages). Loopback only; bounded by SECONDS.
set -e
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ollama-pool-target}"
B=$CARGO_TARGET_DIR/release
for tool in valgrind callgrind_control wrk; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing (apt-get install valgrind wrk)" >&2; exit 2; }
done
[ -x "$B/examples/mock_upstream" ] || cargo build --release --quiet --example mock_upstream
BIN=${1:-$B/ollama-pool}; S=${2:-8}
D=$(mktemp -d)
for i in $(seq -w 0 99); do echo "bench-upstream-key-$i-xxxxxxxxxxxxxxxx" >> $D/keys.txt; done
$B/examples/mock_upstream --listen 127.0.0.1:28180 --chunks 20 2>/dev/null & M=$!
cat > $D/pool.yaml <<YAML
listen: ["127.0.0.1:28201"]
threads: 2
upstream: {url: "http://127.0.0.1:28180", health_check_interval: 0s}
keys: {files: [keys.txt]}
clients: {tokens: [{name: bench, token: "bench-client-token-123"}]}
admin: {listen: "127.0.0.1:28301", token: "bench-admin-token-0123456789"}
server: {grace_period: 0s, shutdown_timeout: 1s, pid_file: $D/pool.pid, upgrade_sock: $D/upgrade.sock}
YAML
if [[ $BIN == *bare_pingora* ]]; then
  valgrind --tool=callgrind --callgrind-out-file=$D/cg.out $BIN --listen 127.0.0.1:28201 --upstream 127.0.0.1:28180 --threads 2 > $D/log 2>&1 & P=$!
  up() { curl -s -o /dev/null http://127.0.0.1:28201/; } # any answer: it has no readiness route
else
  # Ready, and its proxy listener taking connections (under valgrind the admin one can be first).
  up() { curl -sf http://127.0.0.1:28301/readyz >/dev/null && curl -s -o /dev/null http://127.0.0.1:28201/healthz; }
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file=$D/cg.out $BIN serve -c $D/pool.yaml > $D/log 2>&1 & P=$!
fi
trap "kill $M $P 2>/dev/null; wait $P $M 2>/dev/null; rm -rf $D" EXIT
# Under valgrind a build just made can take over a minute to start (its debug info is read
# cold): wait up to 3 minutes, then say so rather than measure nothing.
ready=
for _ in $(seq 900); do up && { ready=1; break; }; sleep 0.2; done
[ -n "$ready" ] || { echo "instructions.sh: $BIN was not ready within 3 minutes under valgrind; its log:" >&2; tail -5 $D/log >&2; exit 1; }
export TOKEN=bench-client-token-123
wrk -t1 -c8 -d3s -s benches/chat.lua http://127.0.0.1:28201/v1/chat/completions >/dev/null
callgrind_control -z $P >/dev/null
out=$(wrk -t1 -c8 -d${S}s -s benches/chat.lua http://127.0.0.1:28201/v1/chat/completions)

callgrind_control -d $P >/dev/null; sleep 2
n=$(echo "$out" | awk '/requests in/ {print $1}')
f=$(ls $D/cg.out* | tail -1)
ir=$(for g in $D/cg.out*; do callgrind_annotate "$g" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'; done | awk '{s+=$1} END{print s}')
echo "$BIN requests=$n Ir=$ir Ir/request=$(awk -v a=$ir -v b=$n 'BEGIN{printf "%.0f", a/b}')"
[ -n "${KEEP:-}" ] && cp $D/cg.out* "$KEEP"/ || true

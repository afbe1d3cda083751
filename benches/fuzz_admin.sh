#!/usr/bin/env bash
# Fuzz the admin API from its own OpenAPI document (issue #12 item 5): schemathesis (from PyPI,
# into a venv under the target dir) against a running ollama-pool in front of the mock
# upstream, with the admin token. Passes when no request gets a 5xx and the server is still
# alive at the end. GET /admin/events is left out: it is an endless stream by design.
#
#   benches/fuzz_admin.sh [MAX_EXAMPLES=50]
# Bounded: schemathesis runs at most 10 minutes (timeout), each request at most 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${1:-50}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ollama-pool-target}"
cargo build --release --quiet --bin ollama-pool --example mock_upstream
BIN=$CARGO_TARGET_DIR/release/ollama-pool
MOCK=$CARGO_TARGET_DIR/release/examples/mock_upstream
VENV=$CARGO_TARGET_DIR/schemathesis-venv
if [ ! -x "$VENV/bin/st" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'schemathesis>=4,<5'
fi
DIR=$(mktemp -d)
MOCK_PORT=18290 POOL_PORT=18291 ADMIN_PORT=18292 TOKEN=fuzz-admin-token-0123456789
cleanup() { kill "${MOCK_PID:-}" "${POOL_PID:-}" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
"$MOCK" --listen 127.0.0.1:$MOCK_PORT 2>/dev/null & MOCK_PID=$!
printf 'fuzz-key-%02d-xxxxxxxxxxxxxxxxxxxxxxxx\n' 1 2 3 > "$DIR/keys.txt"
cat > "$DIR/pool.yaml" <<YAML
listen: ["127.0.0.1:$POOL_PORT"]
threads: 2
upstream: {url: "http://127.0.0.1:$MOCK_PORT", health_check_interval: 0s}
keys: {files: [keys.txt]}
store: {path: $DIR/pool.db}
clients: {tokens: [{name: fuzz, token: "fuzz-client-token-123"}]}
admin: {listen: "127.0.0.1:$ADMIN_PORT", token: "$TOKEN"}
server: {grace_period: 0s, shutdown_timeout: 1s, pid_file: $DIR/pool.pid, upgrade_sock: $DIR/upgrade.sock}
YAML
RUST_LOG=warn "$BIN" serve -c "$DIR/pool.yaml" > "$DIR/pool.log" 2>&1 & POOL_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null && break; sleep 0.1; done

set +e
timeout 600 "$VENV/bin/st" run "http://127.0.0.1:$ADMIN_PORT/admin/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error \
  --exclude-path /admin/events \
  --max-examples "$EXAMPLES" \
  --request-timeout 10 \
  --no-color
status=$?
set -e
if ! kill -0 "$POOL_PID" 2>/dev/null; then
  echo "fuzz_admin.sh: the server died" >&2; cat "$DIR/pool.log" >&2; exit 1
fi
if grep -q "panicked" "$DIR/pool.log"; then
  echo "fuzz_admin.sh: the server panicked" >&2; grep -B2 -A5 panicked "$DIR/pool.log" >&2; exit 1
fi
echo "fuzz_admin.sh: schemathesis exit $status; server alive"
exit "$status"

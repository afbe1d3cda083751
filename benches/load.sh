#!/usr/bin/env bash
# Load harness (issues #6, #14): the mock upstream, an nginx reverse proxy doing the same
# Authorization rewrite, a bare pingora proxy (examples/bare_pingora.rs: fixed peer, one header
# rewrite — the framework's ceiling) and ollama-pool with 100 keys, measured side by side in
# alternating rounds with wrk (non-streaming chat at 8 and 64 connections) and
# examples/stream_load (streams at 1 and 256 concurrent; a burst of 256 streams opened at
# once, 20 events 50 ms apart, a new connection each), plus the RSS of each process, its RSS
# per open stream with 1,000 streams idle between events, and its CPU time per request
# (utime + stime from /proc, every process of the contender). And below saturation: an open
# loop (examples/rate_load: fixed rates over 8 connections, latency from the moment each request
# was due, every round's latencies pooled), where wrk's closed loop cannot go.
# Prints a table and the ratios ollama-pool/nginx and ollama-pool/bare, and the latency added
# versus a direct connection.
#
#   benches/load.sh [SECONDS_PER_RUN=5] [ROUNDS=2]
#   POOL_B=path/to/other/ollama-pool benches/load.sh ...   also measures a second build (e.g. another
#     release profile) as contender "pool-b" in the same rounds, and prints pool-b / ollama-pool.
#   BUDGETS=1 benches/load.sh ...   ollama-pool's client token gets tpm, daily_tokens and monthly_tokens
#     budgets (too large to refuse anything), so every request is checked and debited (issue #12);
#     pool-b's config stays without them (an older build may not know the fields).
#   PROFILE=1 benches/load.sh ...   afterwards samples each proxy with `perf record` under wrk at 64
#     connections for SECONDS_PER_RUN and prints where its CPU goes (share of samples by part:
#     kernel, allocator, libc, tokio, pingora, ollama-pool, other Rust; nginx's own code) and that
#     share of its CPU time per request. Needs perf (Debian: linux-perf).
#   OPEN_RATES="1000 5000" OPEN_ROUNDS=8 OPEN_SECS=3 benches/load.sh ...   the open loop's rates
#     (requests/s over 8 connections), its rounds and their length (the defaults shown).
# Needs: nginx and wrk (Debian packages). Every run is bounded by SECONDS_PER_RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-2}
OPEN_RATES=${OPEN_RATES:-1000 5000} OPEN_ROUNDS=${OPEN_ROUNDS:-8} OPEN_SECS=${OPEN_SECS:-3}
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "load.sh: $tool is missing (apt-get install nginx wrk)" >&2; exit 2; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ollama-pool-target}"
cargo build --release --quiet --bin ollama-pool --example mock_upstream --example stream_load --example bare_pingora --example rate_load
BIN=$CARGO_TARGET_DIR/release

DIR=$(mktemp -d)
MOCK_PORT=18180 NGINX_PORT=18182 POOL_PORT=18181 ADMIN_PORT=18183 POOL_B_PORT=18184 ADMIN_B_PORT=18185 BARE_PORT=18186
CONTENDERS=(direct nginx bare pool)
[ -n "${POOL_B:-}" ] && CONTENDERS+=(pool_b)
TOKEN=bench-client-token-123
LIMITS=""
[ -n "${BUDGETS:-}" ] && LIMITS=", tpm: 100000000000, daily_tokens: 100000000000, monthly_tokens: 100000000000"
cleanup() {
  [ -f "$DIR/nginx.pid" ] && kill "$(cat "$DIR/nginx.pid")" 2>/dev/null || true
  kill "${MOCK_PID:-}" "${POOL_PID:-}" "${POOL_B_PID:-}" "${BARE_PID:-}" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

keys=""
for i in $(seq -w 0 99); do
  echo "bench-upstream-key-$i-xxxxxxxxxxxxxxxx" >> "$DIR/keys.txt"
  keys+="    1% \"bench-upstream-key-$i-xxxxxxxxxxxxxxxx\";"$'\n'
done
sed -e "s|@DIR@|$DIR|g" -e "s|@MOCK_PORT@|$MOCK_PORT|" -e "s|@NGINX_PORT@|$NGINX_PORT|" benches/nginx.conf.in \
  | awk -v keys="$keys" '{ if ($0 ~ /@KEYS@/) printf "%s", keys; else print }' > "$DIR/nginx.conf"
cat > "$DIR/pool.yaml" <<YAML
listen: ["127.0.0.1:$POOL_PORT"]
threads: 2
upstream: {url: "http://127.0.0.1:$MOCK_PORT", health_check_interval: 0s}
keys: {files: [keys.txt]}
clients: {tokens: [{name: bench, token: "$TOKEN"$LIMITS}]}
admin: {listen: "127.0.0.1:$ADMIN_PORT", token: "bench-admin-token-0123456789"}
server: {grace_period: 0s, shutdown_timeout: 1s, pid_file: $DIR/pool.pid, upgrade_sock: $DIR/upgrade.sock}
YAML

"$BIN/examples/mock_upstream" --listen 127.0.0.1:$MOCK_PORT --chunks 20 2>/dev/null & MOCK_PID=$!
nginx -c "$DIR/nginx.conf"
# The framework's ceiling: a bare pingora proxy (fixed peer, one header rewrite), same build.
"$BIN/examples/bare_pingora" --listen 127.0.0.1:$BARE_PORT --upstream 127.0.0.1:$MOCK_PORT --threads 2 2>/dev/null & BARE_PID=$!
RUST_LOG=warn "$BIN/ollama-pool" serve -c "$DIR/pool.yaml" > "$DIR/pool.log" 2>&1 & POOL_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null && break; sleep 0.1; done
if [ -n "${POOL_B:-}" ]; then
  mkdir -p "$DIR/b" && cp "$DIR/keys.txt" "$DIR/b/"
  no_limits=(); [ -n "$LIMITS" ] && no_limits=(-e "s|$LIMITS||")
  sed -e "s/$POOL_PORT/$POOL_B_PORT/; s/$ADMIN_PORT/$ADMIN_B_PORT/; s|$DIR/pool.pid|$DIR/b/pool.pid|; s|$DIR/upgrade.sock|$DIR/b/upgrade.sock|" \
    "${no_limits[@]}" \
    "$DIR/pool.yaml" > "$DIR/b/pool.yaml"
  RUST_LOG=warn "$POOL_B" serve -c "$DIR/b/pool.yaml" > "$DIR/b/pool.log" 2>&1 & POOL_B_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN_B_PORT/readyz" >/dev/null && break; sleep 0.1; done
fi

export TOKEN  # read by benches/chat.lua

ms() { # wrk latency ("812.00us", "1.20ms", "2.00s") -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
declare -A rps p50 p99 sttfb50 sttfb99 stot50 stot99 cpu bttfb50 bttfb99 bbroken
url_of() { case $1 in direct) echo "http://127.0.0.1:$MOCK_PORT";; nginx) echo "http://127.0.0.1:$NGINX_PORT";; bare) echo "http://127.0.0.1:$BARE_PORT";; pool) echo "http://127.0.0.1:$POOL_PORT";; pool_b) echo "http://127.0.0.1:$POOL_B_PORT";; esac; }
# The processes whose CPU a contender's requests cost (direct: none, the mock serves them all).
pids_of() { case $1 in direct) ;; nginx) pgrep -f "nginx: (master|worker)";; bare) echo "$BARE_PID";; pool) echo "$POOL_PID";; pool_b) echo "$POOL_B_PID";; esac; }
# utime + stime of those processes (all their threads), in clock ticks.
ticks() { local sum=0; for p in $(pids_of "$1"); do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $sum; }
HZ=$(getconf CLK_TCK)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$BARE_PORT/" && break; sleep 0.05; done
# A field of the last stream_load or rate_load line in $out ("name=value name=value ...").
get() { echo "$out" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }
add() { # accumulate the mean over rounds
  local -n arr=$1; arr[$2]=$(awk -v a="${arr[$2]:-0}" -v b="$3" -v r="$ROUNDS" 'BEGIN { printf "%.3f", a + b / r }')
}
for round in $(seq "$ROUNDS"); do
  for c in 8 64; do
    for t in "${CONTENDERS[@]}"; do
      before=$(ticks $t)
      out=$(wrk -t2 -c$c -d${SECS}s --latency -s benches/chat.lua "$(url_of $t)/v1/chat/completions")
      after=$(ticks $t)
      n=$(echo "$out" | awk '/requests in/ {print $1}')
      add cpu "$t/$c" "$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.2f", (n > 0 ? d / hz * 1e6 / n : 0) }')"
      add rps "$t/$c" "$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
      add p50 "$t/$c" "$(ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")"
      add p99 "$t/$c" "$(ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")"
      if echo "$out" | grep -q "Non-2xx"; then echo "warning: $t/$c had non-2xx answers" >&2; fi
    done
  done
  for c in 1 256; do
    for t in "${CONTENDERS[@]}"; do
      out=$("$BIN/examples/stream_load" --url "$(url_of $t)" -c $c -d "$SECS" --token "$TOKEN")
      add sttfb50 "$t/$c" "$(get ttfb_p50_ms)"; add sttfb99 "$t/$c" "$(get ttfb_p99_ms)"
      add stot50 "$t/$c" "$(get total_p50_ms)"; add stot99 "$t/$c" "$(get total_p99_ms)"
    done
  done
  # The burst: 256 streams opened at the same moment, time to the first event.
  for t in "${CONTENDERS[@]}"; do
    out=$("$BIN/examples/stream_load" --burst --url "$(url_of $t)" -c 256 -d 10 --chunk-delay-ms 50 --token "$TOKEN")
    add bttfb50 "$t" "$(get ttfb_p50_ms)"; add bttfb99 "$t" "$(get ttfb_p99_ms)"; add bbroken "$t" "$(get broken)"
  done
done
# Below saturation: fixed rates, open loop, OPEN_ROUNDS short rounds of its own. On a VM whose
# threads stall for milliseconds now and then, one run's p99 is mostly which stalls it met: the
# table gives the median of the rounds' p99 (robust to a round that met one) and the pooled
# latencies of all rounds (where the stalls show, in the p99.9).
for _ in $(seq "$OPEN_ROUNDS"); do
  for r in $OPEN_RATES; do
    for t in "${CONTENDERS[@]}"; do
      out=$("$BIN/examples/rate_load" --url "$(url_of $t)" -c 8 -r "$r" -d "$OPEN_SECS" --token "$TOKEN" --samples "$DIR/open.$t.$r")
      [ "$(get errors)" = 0 ] || echo "warning: $t at $r req/s: $(get errors) errors" >&2
      echo "$(get p99_ms)" >> "$DIR/open99.$t.$r"
      echo "$(get late_p99_ms)" >> "$DIR/late.$t.$r"
    done
  done
done
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { printf "%.3f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
# The pooled open-loop latencies: quantile Q (0..1) of a file of microseconds, in ms.
quantile() { sort -n "$1" | awk -v q="$2" '{ v[NR] = $1 } END { i = int(NR * q + 0.999999); if (i < 1) i = 1; printf "%.3f", v[i] / 1000 }'; }
declare -A o50 o99 o999 m99 late
for r in $OPEN_RATES; do
  for t in "${CONTENDERS[@]}"; do
    m99[$t/$r]=$(median "$DIR/open99.$t.$r"); late[$t/$r]=$(median "$DIR/late.$t.$r")
    o50[$t/$r]=$(quantile "$DIR/open.$t.$r" 0.50); o99[$t/$r]=$(quantile "$DIR/open.$t.$r" 0.99); o999[$t/$r]=$(quantile "$DIR/open.$t.$r" 0.999)
  done
done
# 1,000 streams open and idle (2 s between events): RSS while they are open minus before, per
# stream, summed over the contender's processes (direct: the mock's own).
IDLE=1000
declare -A idle_kb
rss_kb_of() { local sum=0; for p in ${1:-$MOCK_PID}; do sum=$((sum + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $sum; }
for t in "${CONTENDERS[@]}"; do
  pids=$(pids_of "$t"); [ "$t" = direct ] && pids=$MOCK_PID
  before=$(rss_kb_of "$pids")
  rm -f "$DIR/open"
  "$BIN/examples/stream_load" --burst --url "$(url_of $t)" -c $IDLE -d 12 --chunk-delay-ms 2000 --token "$TOKEN" \
    --ready-file "$DIR/open" > "$DIR/idle.out" & SL=$!
  for _ in $(seq 100); do [ -f "$DIR/open" ] && break; sleep 0.1; done
  if [ -f "$DIR/open" ]; then
    sleep 0.5
    idle_kb[$t]=$(awk -v a="$before" -v b="$(rss_kb_of "$pids")" -v n=$IDLE 'BEGIN { printf "%.1f", (b - a) / n }')
  else
    idle_kb[$t]="n/a"; echo "warning: $t: not all $IDLE streams got their first event" >&2
  fi
  kill $SL 2>/dev/null || true; wait $SL 2>/dev/null || true
done
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
nginx_rss=0
for p in $(pgrep -f "nginx: (master|worker)"); do nginx_rss=$(awk -v a="$nginx_rss" -v b="$(rss "$p")" 'BEGIN { printf "%.1f", a + b }'); done

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); ${ROUNDS} rounds x ${SECS}s per cell, means of rounds"
echo
row() { # label, then one value per contender
  local label=$1; shift
  printf "%-34s" "$label"; for v in "$@"; do printf " %12s" "$v"; done; echo
}
cells() { local -n arr=$1; for t in "${CONTENDERS[@]}"; do printf "%s " "${arr[$t/$2]}"; done; }
heads() { for t in "${CONTENDERS[@]}"; do case $t in pool) printf "ollama-pool ";; pool_b) printf "pool-b ";; *) printf "%s " "$t";; esac; done; }
row "non-streaming chat" $(heads)
for c in 8 64; do
  row "requests/s, $c conns" $(cells rps $c)
  row "p50 ms, $c conns" $(cells p50 $c)
  row "p99 ms, $c conns" $(cells p99 $c)
  row "CPU us / request, $c conns" $(cells cpu $c)
done
echo
row "SSE stream (20 events)" $(heads)
for c in 1 256; do
  row "TTFB p50 ms, $c streams" $(cells sttfb50 $c)
  row "TTFB p99 ms, $c streams" $(cells sttfb99 $c)
  row "total p99 ms, $c streams" $(cells stot99 $c)
done
bcells() { local -n arr=$1; for t in "${CONTENDERS[@]}"; do printf "%s " "${arr[$t]}"; done; }
row "burst of 256 (50 ms apart)" $(heads)
row "first event p50 ms" $(bcells bttfb50)
row "first event p99 ms" $(bcells bttfb99)
row "broken or unfinished" $(bcells bbroken)
row "RSS KiB per idle stream ($IDLE)" $(bcells idle_kb)
echo
row "open loop, 8 conns (${OPEN_ROUNDS}x${OPEN_SECS}s)" $(heads)
for r in $OPEN_RATES; do
  row "p99 ms, $r req/s, round median" $(cells m99 $r)
  row "  pooled p50 ms" $(cells o50 $r)
  row "  pooled p99 ms" $(cells o99 $r)
  row "  pooled p99.9 ms" $(cells o999 $r)
  row "  client's own lateness p99 ms" $(cells late $r)
done
echo
rss_b=(); [ -n "${POOL_B:-}" ] && rss_b=("$(rss $POOL_B_PID)")
row "RSS MiB (after the run)" "$(rss $MOCK_PID)" "$nginx_rss" "$(rss $BARE_PID)" "$(rss $POOL_PID)" "${rss_b[@]}"
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
diff() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
echo "ollama-pool / nginx requests/s:   8 conns $(ratio "${rps[pool/8]}" "${rps[nginx/8]}"),  64 conns $(ratio "${rps[pool/64]}" "${rps[nginx/64]}")"
echo "ollama-pool / bare requests/s:    8 conns $(ratio "${rps[pool/8]}" "${rps[bare/8]}"),  64 conns $(ratio "${rps[pool/64]}" "${rps[bare/64]}")  (bare pingora / nginx: $(ratio "${rps[bare/8]}" "${rps[nginx/8]}"), $(ratio "${rps[bare/64]}" "${rps[nginx/64]}"))"
echo "CPU per request, ollama-pool / nginx: 8 conns $(ratio "${cpu[pool/8]}" "${cpu[nginx/8]}"),  64 conns $(ratio "${cpu[pool/64]}" "${cpu[nginx/64]}");  / bare: $(ratio "${cpu[pool/8]}" "${cpu[bare/8]}"), $(ratio "${cpu[pool/64]}" "${cpu[bare/64]}")"
echo "added vs direct, wrk 8 conns, saturated (ms): p50 $(diff "${p50[pool/8]}" "${p50[direct/8]}"), p99 $(diff "${p99[pool/8]}" "${p99[direct/8]}")  (nginx: p50 $(diff "${p50[nginx/8]}" "${p50[direct/8]}"), p99 $(diff "${p99[nginx/8]}" "${p99[direct/8]}"))"
for r in $OPEN_RATES; do
  echo "added vs direct, open loop $r/s (ms): p50 $(diff "${o50[pool/$r]}" "${o50[direct/$r]}"), p99 (round median) $(diff "${m99[pool/$r]}" "${m99[direct/$r]}"), pooled $(diff "${o99[pool/$r]}" "${o99[direct/$r]}")  (nginx: $(diff "${o50[nginx/$r]}" "${o50[direct/$r]}"), $(diff "${m99[nginx/$r]}" "${m99[direct/$r]}"), $(diff "${o99[nginx/$r]}" "${o99[direct/$r]}"); bare: $(diff "${o50[bare/$r]}" "${o50[direct/$r]}"), $(diff "${m99[bare/$r]}" "${m99[direct/$r]}"), $(diff "${o99[bare/$r]}" "${o99[direct/$r]}"))"
done
echo "stream TTFB added p99 (ms):       1 stream $(diff "${sttfb99[pool/1]}" "${sttfb99[direct/1]}"), 256 streams $(diff "${sttfb99[pool/256]}" "${sttfb99[direct/256]}")"
echo "burst first event added p99 (ms): ollama-pool $(diff "${bttfb99[pool]}" "${bttfb99[direct]}"), nginx $(diff "${bttfb99[nginx]}" "${bttfb99[direct]}"), bare $(diff "${bttfb99[bare]}" "${bttfb99[direct]}")"
if [ -n "${POOL_B:-}" ]; then
  echo "pool-b / ollama-pool requests/s:  8 conns $(ratio "${rps[pool_b/8]}" "${rps[pool/8]}"),  64 conns $(ratio "${rps[pool_b/64]}" "${rps[pool/64]}")  (pool-b = $POOL_B)"
fi

if [ "${PROFILE:-}" = 1 ]; then
  command -v perf >/dev/null || { echo "load.sh: PROFILE=1 needs perf (apt-get install linux-perf)" >&2; exit 2; }
  echo
  echo "where the CPU goes at 64 conns (perf record -F 999, ${SECS}s under wrk; % of samples, and us per request of the CPU time above)"
  declare -A share
  parts=(kernel allocator libc tokio pingora ollama-pool nginx other)
  for t in "${CONTENDERS[@]}"; do
    [ "$t" = direct ] && continue
    pids=$(pids_of "$t" | paste -sd, -)
    wrk -t2 -c64 -d$((SECS + 1))s -s benches/chat.lua "$(url_of $t)/v1/chat/completions" > /dev/null &
    W=$!
    sleep 0.5
    perf record -q -F 999 -p "$pids" -o "$DIR/perf.$t" -- sleep "$SECS" 2>/dev/null
    wait $W
    # One line per symbol: "pct dso [k|.] symbol"; each symbol goes to one part.
    while read -r part pct; do share[$t/$part]=$pct; done < <(
      perf report -i "$DIR/perf.$t" --stdio --no-children --sort dso,sym 2>/dev/null | awk '
        /^#/ || NF < 4 { next }
        { pct = $1 + 0; dso = $2; sym = $0; sub(/^[^]]*\] /, "", sym)
          if (dso ~ /kernel/) p = "kernel"
          else if (sym ~ /^_?mi_|mi_free|malloc|free$|^__libc_(malloc|free)/) p = "allocator"
          else if (dso ~ /^libc/) p = "libc"
          else if (dso ~ /^nginx/) p = "nginx"
          else if (sym ~ /ollama_pool::/) p = "ollama-pool"
          else if (sym ~ /pingora/) p = "pingora"
          else if (sym ~ /tokio::/) p = "tokio"
          else p = "other"
          sum[p] += pct }
        END { for (p in sum) printf "%s %.1f\n", p, sum[p] }')
  done
  printf "%-34s" "part"; for t in "${CONTENDERS[@]}"; do [ "$t" = direct ] || printf " %18s" "$(case $t in pool) echo ollama-pool;; pool_b) echo pool-b;; *) echo $t;; esac)"; done; echo
  for part in "${parts[@]}"; do
    printf "%-34s" "$part"
    for t in "${CONTENDERS[@]}"; do
      [ "$t" = direct ] && continue
      pct=${share[$t/$part]:-0}
      printf " %9s%% %5s us" "$pct" "$(awk -v p="$pct" -v c="${cpu[$t/64]}" 'BEGIN { printf "%.1f", p * c / 100 }')"
    done
    echo
  done
  echo "(LTO inlines ollama-pool's hooks into pingora's generic proxy code: 'pingora' includes some of ours.)"
fi

#!/usr/bin/env bash
# The README's commands. Each installs the Debian/Ubuntu packages it needs when they are
# missing (saying which), then runs cargo:
#   ./dev.sh run [ARGS]    the proxy on conf/minimal.yaml (release build; ARGS go to `serve`)
#   ./dev.sh test [ARGS]   the test suite: cargo test --locked [ARGS]
#   ./dev.sh demo [ARGS]   `ollama-pool demo` (release build)
#   ./dev.sh deps          only install what the build and the tests need
# Plain cargo works as well once the packages are there: see README "Without dev.sh".
set -euo pipefail
cd "$(dirname "$0")"

say() { printf 'dev.sh: %s\n' "$*" >&2; }

# What the build needs: a C toolchain (cc, and c++ for cmake's checks), cmake (pingora builds
# zlib-ng with it), pkg-config + libssl-dev (openssl-sys), CA certificates (cargo's downloads).
build_needs() {
  command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1 || echo build-essential
  command -v cmake >/dev/null 2>&1 || echo cmake
  command -v pkg-config >/dev/null 2>&1 || echo pkg-config
  dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q 'ok installed' || echo libssl-dev
  [ -s /etc/ssl/certs/ca-certificates.crt ] || echo ca-certificates
}

# What the tests need besides: Prometheus and promtool (tests/prometheus.rs), systemd-analyze
# (tests/packaging.rs verifies the unit file), redis-server and redis-cli (tests/redis_store.rs
# and tests/fleet.rs start their own on a free port; the package's system service is never
# used), nginx (tests/fleet.rs runs conf/fleet-nginx.conf as a process of its own).
test_needs() {
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || echo prometheus
  command -v systemd-analyze >/dev/null 2>&1 || echo systemd
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || echo redis-server
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || echo nginx
}

install() {
  local need=("$@")
  [ ${#need[@]} -gt 0 ] || return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing: ${need[*]} — this is not a Debian/Ubuntu machine; install their equivalents, then run again"
    exit 1
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      say "missing: ${need[*]} — installing them needs root or sudo, and neither is available here."
      say "ask an administrator for: apt-get install ${need[*]}"
      exit 1
    fi
    sudo=(sudo)
  fi
  say "installing Debian packages: ${need[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  say "installed: ${need[*]}"
}

need_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install Rust first (https://rustup.rs), then run again"
    exit 1
  fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  run)
    need_cargo
    mapfile -t need < <(build_needs)
    install "${need[@]}"
    exec cargo run --release --locked -- serve -c conf/minimal.yaml "$@"
    ;;
  demo)
    need_cargo
    mapfile -t need < <(build_needs)
    install "${need[@]}"
    exec cargo run --release --locked -- demo "$@"
    ;;
  test)
    need_cargo
    mapfile -t need < <(build_needs; test_needs)
    install "${need[@]}"
    exec cargo test --locked "$@"
    ;;
  deps)
    mapfile -t need < <(build_needs; test_needs)
    install "${need[@]}"
    ;;
  *)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Fuzzes the parsers and deciders untrusted input reaches (issue #10), each for SECONDS:
#
#   fuzz/run.sh [SECONDS=60] [TARGET ...]     targets: import_parse config_parse usage_scanner classify
#
# Starts from the committed corpus in fuzz/corpus/TARGET and adds the new inputs it finds there
# (commit them if they are worth keeping: `cargo fuzz cmin TARGET` first). A crash stops the run
# and is saved in fuzz/artifacts/TARGET/; the script prints the command that replays it. Fix it
# and add the input as a regression test (tests/properties.rs or the module's unit tests).
#
# Needs cargo-fuzz (installed here if missing) and a C++ compiler (build-essential) for
# libFuzzer. cargo-fuzz passes nightly -Z flags; RUSTC_BOOTSTRAP=1 lets a stable rustc take
# them, so no nightly toolchain is needed.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(import_parse config_parse usage_scanner classify)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz@0.13.2
fi
export RUSTC_BOOTSTRAP=1
# Its own target dir: the instrumented build must not evict the product's cached one.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"

status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="target/$t.log"
  mkdir -p target
  echo "== $t: ${seconds}s (log: fuzz/$log)"
  set +e
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" || true
  if [ "$rc" -ne 0 ]; then
    grep -E 'panicked|SUMMARY|Test unit written|error' "$log" | head -20 || true
    echo "!! $t failed (exit $rc). A crash input is in fuzz/artifacts/$t/; replay it with:"
    echo "   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t artifacts/$t/<file>"
    status=1
  fi
done
exit "$status"

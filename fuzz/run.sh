#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets (nightly + cargo-fuzz; docs/testing.md, "Fuzzing").
#
#   fuzz/run.sh                  every target for 60 s each
#   fuzz/run.sh 120 page_ringba  one target for 120 s
#   fuzz/run.sh build            build only
#
# Each target starts from its committed seeds (fuzz/seeds/<target>) plus what earlier runs
# found (fuzz/corpus/<target>, not committed); crashes land in fuzz/artifacts/<target>.
# The build has its own target dir (target-fuzz at the repo root), never the main one.
#
# No sanitizer (-s none): the cc crate passes -fsanitize=address on to C dependencies
# (zstd-sys), after which librdkafka's ./configure cannot link its checks and fails. Safe Rust
# needs no ASan; overflow checks and debug assertions stay on (cargo-fuzz's default).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(cd .. && pwd)/target-fuzz}"
export SQLX_OFFLINE=true

if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)" >&2
  exit 2
fi

if [[ "${1:-}" == "build" ]]; then
  exec cargo +nightly fuzz build --sanitizer none
fi

seconds="${1:-60}"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build --sanitizer none
status=0
mkdir -p artifacts
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log="artifacts/$target.log"
  echo "=== fuzz/run.sh: $target for ${seconds}s (log: fuzz/$log)"
  # -rss_limit_mb / -malloc_limit_mb: a huge allocation is a finding; -timeout: so is a hang
  if ! cargo +nightly fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1; then
    echo "!!! $target FAILED: see fuzz/$log and fuzz/artifacts/$target/"
    status=1
  fi
  grep -E '^#[0-9]+ +(DONE|INITED)|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|SUMMARY|panicked' "$log" | tail -n 6 || true
done
exit "$status"

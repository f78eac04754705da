#!/usr/bin/env bash
# The fuzz targets (fuzz/), short runs: each target is built with libFuzzer's coverage
# instrumentation on the stable toolchain (no sanitizer: the C libraries underneath would need
# an instrumented rebuild that costs more CI time than the run) and runs for FUZZ_SECONDS
# (default 10) from its committed seed corpus. New inputs go to a scratch directory; a crash
# or a failed assertion fails the script and leaves the input under target/fuzz/artifacts/.
# For long campaigns with AddressSanitizer: `cargo +nightly fuzz run TARGET` in fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-10}"
targets=(frame_decoder dispatcher template mechanism store_record backup ksp_blobs protection)
triple="$(rustc -vV | sed -n 's/^host: //p')"
# --target keeps these flags off build scripts and proc macros (as cargo-fuzz does).
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="$PWD/target/fuzz"
cargo build --release --locked --manifest-path fuzz/Cargo.toml --target "$triple" --bins
mkdir -p target/fuzz/artifacts
status=0
for t in "${targets[@]}"; do
  scratch="$(mktemp -d)"
  echo "fuzz: $t for ${secs}s (seeds: $(ls fuzz/corpus/$t 2>/dev/null | wc -l))"
  if ! "target/fuzz/$triple/release/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="target/fuzz/artifacts/$t-" -print_final_stats=1 \
      "$scratch" "fuzz/corpus/$t" 2> "target/fuzz/$t.log"; then
    echo "fuzz: $t FAILED; see target/fuzz/$t.log and target/fuzz/artifacts/"
    tail -40 "target/fuzz/$t.log"
    status=1
  else
    grep -E "stat::number_of_executed_units|stat::new_units_added" "target/fuzz/$t.log" \
      | sed "s/^/fuzz: $t: /"
  fi
  rm -rf "$scratch"
done
exit "$status"

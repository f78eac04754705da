#!/usr/bin/env bash
# Every test: installs what the tests need, builds once (release), runs the workspace tests
# (unit, firmware, ABI, end-to-end through the built .so with real tools).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

cargo build --release --locked --workspace
export TEST_PKCS11_MODULE="$PWD/target/release/libferrohsm_pkcs11.so"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --workspace --no-fail-fast || status=$?
else
  cargo test --release --locked --workspace --no-fail-fast || status=$?
fi

# The fuzz targets, 10 seconds each from their seed corpora (scripts/fuzz.sh).
scripts/fuzz.sh || status=$?

# The conformance suite: every scenario and golden return code against FerroHSM, with SoftHSMv2
# side by side for reference, and SoftHSMv2 again behind our bridge (kind = "module"), whose
# results must equal SoftHSM's own, and FerroHSM through a `ferrohsm serve` daemon (kind = "remote"),
# on its Unix socket (--daemon) and over TLS on a loopback port (--tls), whose results must equal the
# embedded ones. Fails if any FerroHSM scenario fails or a daemon's result differs.
target/release/ferrohsm-conformance \
  --module "$TEST_PKCS11_MODULE" \
  --reference /usr/lib/softhsm/libsofthsm2.so \
  --bridge /usr/lib/softhsm/libsofthsm2.so \
  --daemon \
  --tls \
  --json target/conformance-report.json || status=$?

# The conformance suite again under every vendor personality (issue 22): each FerroHSM scenario
# passes there, or fails for a reason the personality itself gives (`n/a`); `ferrohsm check`'s
# predictions must match what the firmware refuses.
target/release/ferrohsm-conformance \
  --module "$TEST_PKCS11_MODULE" \
  --personality all \
  --json target/conformance-personalities.json || status=$?

# The benchmark, quick mode: proves every workload runs against both modules (about 50 ms per
# measurement, 200 token objects); no timing is asserted. The full run is in README.md.
target/release/ferrohsm-bench --quick \
  --module softhsm=/usr/lib/softhsm/libsofthsm2.so \
  --module ferrohsm="$TEST_PKCS11_MODULE" \
  --module ferrohsm-daemon="$TEST_PKCS11_MODULE" \
  --module ferrohsm-cluster="$TEST_PKCS11_MODULE" \
  --module ferrohsm-tls="$TEST_PKCS11_MODULE" \
  --json target/bench-quick.json || status=$?
# Two tenants on one daemon, one flooding (issue 20): B's latencies reported, not asserted.
target/release/ferrohsm-bench --noisy-neighbour --module "$TEST_PKCS11_MODULE" --secs 1 || status=$?
exit "$status"


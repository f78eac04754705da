#!/usr/bin/env bash
# Every test: installs what the tests need, builds once (release), runs the workspace tests
# (unit, firmware, ABI, end-to-end through the built .so with real tools).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

cargo build --release --locked --workspace
export TEST_PKCS11_MODULE="$PWD/target/release/libferrohsm_pkcs11.so"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --workspace --no-fail-fast
else
  cargo test --release --locked --workspace --no-fail-fast
fi

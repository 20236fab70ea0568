#!/usr/bin/env bash
# A longer fuzzing campaign than the test suite's (2,000 inputs per target): the same seeded
# property tests (tests/common/fuzz.rs) with GRALORA_FUZZ_CASES inputs per target, default 100,000.
# Prints one line per target: inputs tried, inputs the reader accepted; a failure prints the
# smallest failing mutation proptest found and exits non-zero. The corpus is the seed files each
# target names (tests/fixtures and files the targets write from them), mutated by proptest.
#
#   bash scripts/fuzz_campaign.sh            # 100,000 inputs per target
#   GRALORA_FUZZ_CASES=1000000 bash scripts/fuzz_campaign.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gralora-target}"
export GRALORA_FUZZ_CASES="${GRALORA_FUZZ_CASES:-100000}"
start=$(date +%s)
log=$(mktemp)
status=0
cargo test --workspace --no-fail-fast --test models --test train fuzz -- --nocapture --test-threads=2 \
    --skip the_fuzz_harness >"$log" 2>&1 || status=$?
grep -oE 'fuzz [^:]+: ([0-9]+ inputs.*|Test failed.*)' "$log" || true
grep -E 'FAILED|^test result' "$log" || true
echo "campaign: ${GRALORA_FUZZ_CASES} inputs per target, $(( $(date +%s) - start )) s (log: $log)"
exit "$status"

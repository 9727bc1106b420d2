#!/usr/bin/env bash
# The one command that runs all tests: tier 1 (unit/model) and tier 2 (host KVM) through
# cargo, then the aarch64 unit tests under qemu-user, then tier 3 (rigs) for the arches in
# RIG_ARCHES. Every tool a tier needs is installed by the scripts it calls (see README.md).
# Prints each tier's wall time at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
TIMES=()
FAILED=0
tier() { # NAME COMMAND... : runs one tier and records its time and result
    local name=$1 start rc=0
    shift
    start=$(date +%s)
    "$@" || rc=$?
    TIMES+=("$(printf '%-34s %4ds%s' "$name" $(($(date +%s) - start)) "$([ $rc = 0 ] || echo "  FAILED (status $rc)")")")
    [ "$rc" = 0 ] || FAILED=1
}
summary() {
    echo "== tier times"
    printf '  %s\n' "${TIMES[@]}"
}
tier "tiers 1+2 (cargo test, x86_64)" cargo test --workspace
# Fuzz smoke: every fuzz target builds under cargo-afl and runs a few seconds. cargo-afl and
# the AFL build are cached outside the repo (tests/fuzz.sh), so only a cold cache pays for
# installing it (a few minutes). FUZZ_SMOKE=0 skips it. The targets' code and seeds are also
# built and replayed by cargo test above (tests/fuzz). Long runs: tests/fuzz.sh TARGET SECONDS.
if [ "${FUZZ_SMOKE:-1}" = 1 ]; then
    tier "fuzz smoke (cargo-afl)" ./tests/fuzz.sh --smoke 5
else
    echo "fuzz smoke: SKIPPED (FUZZ_SMOKE=0)"
fi
# The rigs take minutes: not worth running on a tree whose unit tests fail.
if [ "$FAILED" = 1 ]; then
    summary
    exit 1
fi
# aarch64 unit tests, cross-built with Debian's rustc and run under qemu-user (no KVM needed).
# Set AARCH64_UNIT=0 to skip.
if [ "${AARCH64_UNIT:-1}" = 1 ]; then
    tier "tier 1 (aarch64 under qemu-user)" ./tests/aarch64-unit.sh
else
    echo "aarch64 unit tests: SKIPPED (AARCH64_UNIT=0)"
fi
# Rig arches whose scenarios have been proven end to end; override with RIG_ARCHES.
RIG_ARCHES=${RIG_ARCHES-x86_64 aarch64}
if [ -n "$RIG_ARCHES" ]; then
    for arch in $RIG_ARCHES; do
        tier "tier 3 (rig $arch)" ./tests/rig.sh "$arch"
    done
else
    echo "rig tier: SKIPPED (RIG_ARCHES is empty)"
fi
summary
[ "$FAILED" = 0 ]

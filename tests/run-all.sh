#!/usr/bin/env bash
# The one command that runs all tests: tier 1 (unit/model) and tier 2 (host KVM) through
# cargo, then tier 3 (rigs) for the arches in RIG_ARCHES. See README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
# aarch64 unit tests, cross-built with Debian's rustc and run under qemu-user (no KVM needed).
# Set AARCH64_UNIT=0 to skip.
if [ "${AARCH64_UNIT:-1}" = 1 ]; then
    ./tests/aarch64-unit.sh
else
    echo "aarch64 unit tests: SKIPPED (AARCH64_UNIT=0)"
fi
# Rig arches whose scenarios have been proven end to end; override with RIG_ARCHES.
RIG_ARCHES=${RIG_ARCHES-x86_64 aarch64}
if [ -n "$RIG_ARCHES" ]; then
    ./tests/rig.sh $RIG_ARCHES
else
    echo "rig tier: SKIPPED (RIG_ARCHES is empty)"
fi

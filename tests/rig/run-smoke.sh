#!/usr/bin/env bash
# run-smoke.sh [ARCH...] : the smoke scenario in each rig (default: x86_64 aarch64).
# Builds whatever is missing first (kernels ~15 min each when the cache is empty).
# Serial logs: $RIG_LOG_DIR/ARCH (default $RIG_CACHE/logs/smoke-DATE/ARCH).
# Ends with the line "N passed, N failed"; exit status 0 only if all passed.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ARCHES=("$@")
[ ${#ARCHES[@]} -gt 0 ] || ARCHES=(x86_64 aarch64)
BASE_LOG=${RIG_LOG_DIR:-${RIG_CACHE:-$HOME/.cache/iommufd-vmm-rig}/logs/smoke-$(date +%Y%m%d-%H%M%S)}
pass=0 fail=0
for arch in "${ARCHES[@]}"; do
    if RIG_LOG_DIR="$BASE_LOG/$arch" RIG_QUIET=${RIG_QUIET:-1} \
        bash "$ROOT/resources/rig/run.sh" "$arch" "$HERE/smoke.sh" "$HERE/l1-lib.sh"; then
        echo "rig smoke $arch: PASS"
        pass=$((pass + 1))
    else
        echo "rig smoke $arch: FAIL (logs: $BASE_LOG/$arch)"
        fail=$((fail + 1))
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]

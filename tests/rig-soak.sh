#!/usr/bin/env bash
# Runs one rig scenario N times in a row, without retries, and counts the failures: the
# reliability measure of the rigs (a flaky scenario is a bug to root out). Not part of CI.
#
#   tests/rig-soak.sh ARCH SCENARIO N
#
# Every run's serial log is kept under $RIG_CACHE/logs/soak-ARCH-SCENARIO-STAMP/NN/; a
# summary line per run and the totals go to stdout and to summary.txt there. Environment as
# for tests/rig.sh (RIG_SMP, RIG_TCG_THREAD, RIG_L2_VMM, RIG_APPEND, RIG_TIMEOUT, ...);
# SOAK_STOP=1 stops at the first failure.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/resources/rig/lib.sh"
ARCH=${1:?usage: $0 ARCH SCENARIO N}
SCENARIO=${2:?usage: $0 ARCH SCENARIO N}
N=${3:?usage: $0 ARCH SCENARIO N}
DIR="$RIG_CACHE/logs/soak-$ARCH-$SCENARIO-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$DIR"
echo "soak: $ARCH $SCENARIO x$N (RIG_SMP=${RIG_SMP:-default} RIG_TCG_THREAD=${RIG_TCG_THREAD:-arch default} RIG_L2_VMM=${RIG_L2_VMM:-vmm} RIG_APPEND='${RIG_APPEND:-}'), logs in $DIR" | tee "$DIR/summary.txt"
pass=0 fail=0
START=$(date +%s)
for i in $(seq 1 "$N"); do
    d=$(printf '%s/%02d' "$DIR" "$i")
    mkdir -p "$d"
    t0=$(date +%s)
    if RIG_RETRY=0 RIG_QUIET=1 RIG_LOG_DIR="$d" RIG_SCENARIOS="$SCENARIO" \
        "$ROOT/tests/rig.sh" "$ARCH" >"$d/rig.out" 2>&1; then
        r=PASS pass=$((pass + 1))
    else
        r=FAIL fail=$((fail + 1))
    fi
    reason=$(sed -n 's/^reason=//p' "$d/result" 2>/dev/null)
    wall=$(($(date +%s) - t0))
    echo "soak: run $i/$N: $r ${wall}s ${reason:+($reason)}" | tee -a "$DIR/summary.txt"
    [ "$r" = PASS ] || [ "${SOAK_STOP:-0}" != 1 ] || break
done
echo "soak: $ARCH $SCENARIO: $pass passed, $fail failed in $(rig_elapsed "$START")" | tee -a "$DIR/summary.txt"
[ "$fail" = 0 ]

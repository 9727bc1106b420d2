#!/usr/bin/env bash
# run.sh ARCH SCENARIO [FILE[=DEST]]...
#
# One entry point for the TCG test rigs: builds what is missing (kernel, busybox
# initramfs; host qemu from bookworm-backports), packs SCENARIO (a busybox /bin/sh
# script, run as /scenario.sh inside L1) and the FILEs (at DEST, default
# /rig/<basename>) into the L1 initramfs, boots QEMU and judges the serial log.
#
#   aarch64: virt,virtualization=on,gic-version=3,iommu=smmuv3 (SMMUv3 nested, ITS), -cpu max
#   x86_64:  q35 + intel-iommu,intremap=on, -cpu max (nested SVM for /dev/kvm in L1)
#   devices: edu (1234:11e8), virtio-net-pci (user net, restricted),
#            virtio-blk-pci on a scratch raw image; all modern-only, iommu_platform=on.
#
# Exit status: 0 only when a line "RIG-RESULT: PASS" (optionally followed by a space and
# any text) appeared and no "RIG-RESULT: FAIL..." line, no kernel
# panic/oops/BUG; 1 = FAIL line or no PASS line; 2 = kernel panic, oops or BUG;
# 124 = timeout. On failure the tail of the serial log is printed.
#
# Environment:
#   RIG_TIMEOUT   hard timeout of the QEMU run in seconds (600)
#   RIG_MEM       guest memory (2G)           RIG_SMP  vCPUs (aarch64 2, x86_64 1)
#   RIG_TCG_THREAD  multi (default: one host thread per vCPU) or single (round-robin)
#   RIG_L0_QEMU   x86_64: the QEMU emulating L1's machine: trixie-backports (default) or
#                 trixie, Debian's build of that release bundled by l0-qemu.sh, or host (the
#                 host's bookworm-backports QEMU 10.0.2, which loses L1's wake-ups: see
#                 docs/rig-reliability.md, failure mode 4)
#   x86_64 runs L1 with one vCPU by default: with two, QEMU's TCG emulating nested SVM loses
#   about one L2 boot in four (L1 triple faults, L2 triple faults, L2 vCPUs never woken),
#   for our VMM and for QEMU's alike: see docs/rig-reliability.md
#   RIG_LOG_DIR   where serial.log, qemu.cmdline, result are kept
#                 (default $RIG_CACHE/logs/ARCH-YYYYmmdd-HHMMSS-PID)
#   RIG_APPEND    extra kernel parameters (e.g. rig.shell)
#   RIG_QEMU_ARGS extra QEMU arguments (word-split)
#   RIG_SCRATCH_SIZE  size of the virtio-blk scratch image (64M)
#   RIG_QUIET=1   do not copy the serial console to stderr
#   RIG_WITH_L2=1 also put the kernel (/rig/l2/Image or bzImage) and the base busybox
#                 initramfs (/rig/l2/initramfs.cpio.gz) into L1, for L2 guests
#   RIG_INTERACTIVE=1  console on the terminal, rig.shell, no timeout/judging
#   RIG_STALL_S   seconds of console silence after which L1 counts as frozen (240, 0 = off):
#                 QEMU's monitor is asked for the vCPU state (registers, the code at the PC,
#                 three samples) into stall.txt, then QEMU is stopped and the run fails
#   and those of build-kernel.sh / lib.sh (RIG_CACHE, RIG_JOBS, RIG_NICE, ...).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ARCH=${1:-}
SCENARIO=${2:-}
if [ -z "$ARCH" ] || [ -z "$SCENARIO" ]; then
    rig_die "usage: $0 aarch64|x86_64 SCENARIO.sh [FILE[=DEST]]..."
fi
rig_arch_check "$ARCH"
[ -f "$SCENARIO" ] || rig_die "scenario $SCENARIO not found"
shift 2

T0=$(date +%s)
rig_need_qemu "$ARCH"
KERNEL=$(bash "$RIG_LIB_DIR/build-kernel.sh" "$ARCH")
[ -f "$KERNEL" ] || rig_die "no kernel image"

LOG_DIR=${RIG_LOG_DIR:-$RIG_CACHE/logs/$ARCH-$(date +%Y%m%d-%H%M%S)-$$}
mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rig-run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

L2_FILES=()
if [ "${RIG_WITH_L2:-0}" = 1 ]; then
    # The same kernel and the base busybox initramfs, for an L2 guest started in L1.
    L2_INITRD=$(bash "$RIG_LIB_DIR/build-initramfs.sh" "$ARCH")
    L2_FILES=("$KERNEL=/rig/l2/$(basename "$KERNEL")" "$L2_INITRD=/rig/l2/initramfs.cpio.gz")
fi
INITRD="$WORK/l1-initramfs.cpio.gz"
bash "$RIG_LIB_DIR/build-initramfs.sh" "$ARCH" "$INITRD" --scenario "$SCENARIO" \
    "${L2_FILES[@]}" "$@" >/dev/null
truncate -s "${RIG_SCRATCH_SIZE:-64M}" "$WORK/scratch.img"

MEM=${RIG_MEM:-2G}
# nokaslr: L1's kernel sits where System.map says, so a stall sample's PC names a function.
APPEND="panic=-1 nokaslr ${RIG_APPEND:-}"
[ "${RIG_INTERACTIVE:-0}" = 1 ] && APPEND="$APPEND rig.shell"
case "$ARCH" in
    aarch64)
        SMP=${RIG_SMP:-2}
        QEMU=(qemu-system-aarch64
              -machine virt,virtualization=on,gic-version=3,iommu=smmuv3
              -cpu max -smp "$SMP" -m "$MEM" -accel "tcg,thread=${RIG_TCG_THREAD:-multi}"
              -kernel "$KERNEL" -initrd "$INITRD"
              -append "console=ttyAMA0 earlycon arm_smmu_v3.rig_force_canwbs=1 $APPEND")
        VIRTIO_OPTS=disable-legacy=on,iommu_platform=on
        ;;
    x86_64)
        SMP=${RIG_SMP:-1}
        L0_QEMU=qemu-system-x86_64
        if [ "${RIG_L0_QEMU:-trixie-backports}" != host ]; then
            L0_ROOT=$(bash "$RIG_LIB_DIR/l0-qemu.sh" x86_64 "${RIG_L0_QEMU:-trixie-backports}") ||
                rig_die "no L0 QEMU bundle (RIG_L0_QEMU=${RIG_L0_QEMU:-trixie-backports})"
            L0_QEMU=$L0_ROOT/bin/qemu
        fi
        rig_log "x86_64: L0 $("$L0_QEMU" --version | head -n1)"
        QEMU=("$L0_QEMU"
              -machine q35 -accel "tcg,thread=${RIG_TCG_THREAD:-multi}" -vga none
              -cpu max -smp "$SMP" -m "$MEM"
              -device intel-iommu,intremap=on
              -kernel "$KERNEL" -initrd "$INITRD"
              -append "console=ttyS0 intel_iommu=on no_timer_check $APPEND")
        VIRTIO_OPTS=disable-legacy=on,iommu_platform=on
        ;;
esac
QEMU+=(-no-reboot -nic none
       -device edu
       -netdev user,id=n0,restrict=on
       -device "virtio-net-pci,netdev=n0,$VIRTIO_OPTS"
       -drive "file=$WORK/scratch.img,format=raw,if=none,id=d0"
       -device "virtio-blk-pci,drive=d0,$VIRTIO_OPTS")
# shellcheck disable=SC2206
[ -n "${RIG_QEMU_ARGS:-}" ] && QEMU+=(${RIG_QEMU_ARGS})

# QEMU's own log of guest errors and CPU resets: an L1 that resets itself (a triple fault in
# L1, which -no-reboot turns into a plain exit 0) is told apart from an L2 failure by it.
QEMU+=(-d guest_errors,cpu_reset -D "$LOG_DIR/qemu.debug")

SERIAL="$LOG_DIR/serial.log"
printf '%q ' "${QEMU[@]}" >"$LOG_DIR/qemu.cmdline"
echo >>"$LOG_DIR/qemu.cmdline"
: >"$SERIAL"

if [ "${RIG_INTERACTIVE:-0}" = 1 ]; then
    rig_log "interactive $ARCH rig (serial copy in $SERIAL); Ctrl-a x quits QEMU"
    exec "${QEMU[@]}" -nographic -chardev "stdio,id=s0,mux=on,signal=off,logfile=$SERIAL" \
        -serial chardev:s0 -mon chardev=s0
fi

# A monitor on a pair of FIFOs (QEMU opens them read-write, so nothing blocks), for the stall
# watch below: bash alone can talk to it, no socat or python needed.
MON="$WORK/monitor"
mkfifo "$MON.in" "$MON.out"
QEMU+=(-chardev "pipe,id=mon0,path=$MON" -mon chardev=mon0,mode=readline
       -pidfile "$WORK/qemu.pid")

# rig_monitor COMMAND : one HMP command; prints what came back until 1 s of quiet, without
# the readline echo of the command (the lines with terminal escapes).
rig_monitor() {
    local line
    printf '%s\n' "$1" >&7
    while IFS= read -r -t 1 -u 8 line; do
        line=${line%$'\r'}
        case "$line" in *$'\e'*) continue ;; esac
        printf '%s\n' "$line"
    done
}

# rig_symbolize SYSTEM_MAP FILE : for each distinct PC (x86 RIP=, arm64 PC=) in FILE, the
# System.map symbol at or below it, as "PC symbol+offset".
rig_symbolize() {
    local map=$1 file=$2
    [ -f "$map" ] || { echo "(no $map)"; return 0; }
    sed -n 's/.*\(RIP\|PC\)=\([0-9a-fA-F]\{16\}\).*/\2/p' "$file" | sort -u | while read -r pc; do
        # awk's numbers are doubles: compare the low 40 bits of symbols that share the PC's
        # upper 24.
        awk -v pc="$pc" '
            function hex(s,   i, v) {
                v = 0; s = tolower(s)
                for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
                return v
            }
            BEGIN { top = tolower(substr(pc, 1, 6)); want = hex(substr(pc, 7)); best = -1 }
            tolower(substr($1, 1, 6)) == top {
                a = hex(substr($1, 7)); if (a <= want && a > best) { best = a; name = $3 }
            }
            END { if (best >= 0) printf "%s %s+0x%x\n", pc, name, want - best; else print pc, "?" }
        ' "$map"
    done
}

# rig_regs_of_sample N : the register lines (RIP/PC and general registers) of sample N of
# the stall file being written.
rig_regs_of_sample() {
    awk -v n="$1" '/^=== sample / { s = $3 } s == n && /^ ?(RAX|RBX|RCX|RDX|RSI|RDI|RBP|RSP|R8 |R9 |R1[0-5]|RIP|PC|X[0-9][0-9])=/' \
        "$LOG_DIR/stall.txt.part" 2>/dev/null
}

# The stall watch: an L1 whose console is silent for RIG_STALL_S seconds is frozen (seen on
# x86_64, docs/rig-reliability.md). Three samples of its vCPUs' state, 2 s apart, show whether
# it spins (and where) or sleeps; then QEMU is stopped rather than left to the timeout.
rig_stall_watch() {
    local stall=$1 age cpu
    exec 7<>"$MON.in" 8<>"$MON.out"
    while sleep 10; do
        [ -f "$WORK/qemu.pid" ] || continue
        kill -0 "$(cat "$WORK/qemu.pid")" 2>/dev/null || return 0
        age=$(($(date +%s) - $(stat -c %Y "$SERIAL")))
        [ "$age" -ge "$stall" ] || continue
        echo "verdict: not sampled" >"$LOG_DIR/.stalled"
        {
            echo "L1 console silent for ${age}s; QEMU's view of the vCPUs, three samples 2 s apart"
            rig_monitor "" >/dev/null # the banner
            for sample in 1 2 3; do
                echo "=== sample $sample at $(date +%T)"
                rig_monitor "info cpus"
                for cpu in $(seq 0 $((SMP - 1))); do
                    echo "--- vCPU $cpu"
                    rig_monitor "cpu $cpu" >/dev/null
                    rig_monitor "info registers"
                    rig_monitor "x/12i \$pc"
                done
                [ "$ARCH" = x86_64 ] && rig_monitor "info lapic"
                sleep 2
            done
            syms=$(rig_symbolize "$(dirname "$KERNEL")/System.map" "$LOG_DIR/stall.txt.part")
            # The verdict. Halted (x86 HLT=1) or every PC in an idle function: L1 waits for
            # interrupts. Otherwise the same registers in the first and last sample: a vCPU
            # that no longer moves. Otherwise L1 runs and just prints nothing.
            if grep -q "HLT=1" "$LOG_DIR/stall.txt.part" ||
                { [ -n "$syms" ] && ! echo "$syms" | grep -vqi "idle"; }; then
                verdict="idle (L1's vCPUs wait for interrupts: a scenario waiting without output, or an L2 gone quiet)"
            elif [ "$(rig_regs_of_sample 1)" = "$(rig_regs_of_sample 3)" ]; then
                verdict="frozen (every vCPU's registers unchanged over 4 s)"
            else
                verdict="silent but running (L1's vCPUs moved between samples)"
            fi
            echo "verdict: $verdict" >"$LOG_DIR/.stalled"
            echo "verdict: $verdict"
            echo "=== the sampled PCs in L1's System.map (an L2 PC names nothing sensible)"
            echo "$syms"
        } >"$LOG_DIR/stall.txt.part" 2>&1
        mv "$LOG_DIR/stall.txt.part" "$LOG_DIR/stall.txt"
        kill "$(cat "$WORK/qemu.pid")" 2>/dev/null
        return 0
    done
}

TIMEOUT=${RIG_TIMEOUT:-600}
STALL=${RIG_STALL_S:-240}
WATCH_PID=
if [ "$STALL" -gt 0 ]; then
    rig_stall_watch "$STALL" &
    WATCH_PID=$!
fi
rig_log "booting $ARCH rig (timeout ${TIMEOUT}s, log $SERIAL)"
BOOT_START=$(date +%s.%N)
BOOT_WALL=
QRC=0
# The reader loop keeps the log, copies it to stderr and notes when init is up.
set +e
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" -display none -monitor none -serial stdio \
    </dev/null 2>"$LOG_DIR/qemu.stderr" |
{
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%$'\r'}
        printf '%s\n' "$line" >>"$SERIAL"
        [ "${RIG_QUIET:-0}" = 1 ] || printf '%s | %s\n' "$ARCH" "$line" >&2
        case "$line" in
            RIG-INIT:\ up*)
                printf '%s\n' "$(date +%s.%N)" >"$LOG_DIR/.init-up" ;;
        esac
    done
}
QRC=${PIPESTATUS[0]}
[ -n "$WATCH_PID" ] && { kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null; }
set -e
END=$(date +%s.%N)
if [ -f "$LOG_DIR/.init-up" ]; then
    BOOT_WALL=$(awk -v a="$BOOT_START" -v b="$(cat "$LOG_DIR/.init-up")" 'BEGIN { printf "%.1f", b - a }')
    rm -f "$LOG_DIR/.init-up"
fi
RUN_WALL=$(awk -v a="$BOOT_START" -v b="$END" 'BEGIN { printf "%.1f", b - a }')
GUEST_UP=$(sed -n 's/^RIG-INIT: up .* uptime=\([0-9.]*\)s.*/\1/p' "$SERIAL" | head -n1)

RESULT=PASS RC=0 WHY=""
if [ -f "$LOG_DIR/.stalled" ]; then
    RESULT=FAIL RC=124 WHY="no console output from L1 for ${STALL}s ($(sed 's/^verdict: //' "$LOG_DIR/.stalled")); vCPU state in $LOG_DIR/stall.txt"
    rm -f "$LOG_DIR/.stalled"
elif [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
    RESULT=FAIL RC=124 WHY="timeout after ${TIMEOUT}s"
elif grep -qE 'Kernel panic|Internal error: Oops|^(\[ *[0-9.]+\] )?(Oops|BUG):' "$SERIAL"; then
    RESULT=FAIL RC=2 WHY="kernel panic/oops/BUG"
elif grep -q "^$RIG_FAIL_MARKER" "$SERIAL"; then
    RESULT=FAIL RC=1 WHY="$(grep -m1 "^$RIG_FAIL_MARKER" "$SERIAL")"
elif ! grep -qE "^$RIG_PASS_MARKER( .*)?\$" "$SERIAL"; then
    RESULT=FAIL RC=1 WHY="no '$RIG_PASS_MARKER' line (qemu exit status $QRC)"
    if grep -qi 'triple fault' "$LOG_DIR/qemu.debug" 2>/dev/null; then
        WHY="$WHY; L1 itself triple-faulted (see qemu.debug)"
    fi
fi

{
    echo "arch=$ARCH"
    echo "scenario=$SCENARIO"
    echo "result=$RESULT"
    echo "reason=$WHY"
    echo "qemu_exit=$QRC"
    echo "kernel=$KERNEL"
    echo "boot_to_init_wall_s=${BOOT_WALL:-}"
    echo "boot_to_init_guest_s=${GUEST_UP:-}"
    echo "qemu_wall_s=$RUN_WALL"
    echo "total_wall_s=$(($(date +%s) - T0))"
} >"$LOG_DIR/result"

if [ "$RESULT" = PASS ]; then
    rig_log "$ARCH: PASS (init up after ${BOOT_WALL:-?}s wall / ${GUEST_UP:-?}s guest, qemu ${RUN_WALL}s, total $(($(date +%s) - T0))s); log: $SERIAL"
else
    echo "----- last 40 lines of $SERIAL -----" >&2
    tail -n 40 "$SERIAL" >&2
    [ -s "$LOG_DIR/qemu.stderr" ] && { echo "----- qemu stderr -----" >&2; tail -n 10 "$LOG_DIR/qemu.stderr" >&2; }
    [ -s "$LOG_DIR/stall.txt" ] && { echo "----- stall.txt (first sample) -----" >&2; sed -n '/=== sample 2/q;p' "$LOG_DIR/stall.txt" | head -n 120 >&2; }
    rig_log "$ARCH: FAIL: $WHY; logs in $LOG_DIR"
fi
exit "$RC"

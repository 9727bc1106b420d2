#!/bin/sh
# Runs inside L1: benchmark figures for the issues (not a pass/fail test; prints BENCH lines).
#   L2 boot time (VMM start to the L2 init report), virtio-blk sequential throughput in L2
#   for our emulated virtio-blk and for QEMU's virtio-blk passed through, passthrough setup
#   and guest-RAM DMA map time for 512 MiB: anonymous vs memfd, and memfd pinned on 2 and 4
#   threads. aarch64 also: the passed-through virtio-blk behind our vSMMU (S1+S2, iommu=on)
#   against S2 only, strict and lazy, K rounds (rig.bench_runs=, default 3) alternating,
#   medians; and the invalidation ioctls per 1,000 forwarded guest TLB/CD invalidation
#   commands. Strict write speed follows how many invalidations L2's writeback needs (it varies
#   from run to run: ~400 or ~7,700 for the same 32 MiB dd), each a round trip of about 0.2 ms
#   through the VMM, L1's kernel and QEMU-TCG's SMMU: the per-run lines show both.
. /rig/l1-lib.sh
ARCH=$(uname -m)
case "$ARCH" in
    x86_64) CONSOLE="console=ttyS0 reboot=k panic=-1 no_timer_check i8042.noaux i8042.nomux i8042.dumbkbd" ;;
    aarch64) CONSOLE="console=ttyS0 earlycon panic=-1" ;;
esac
run_l2() { # NAME ARGS... : boot L2 (console on L1's, prefixed "L2| ", kept in /tmp/NAME.log;
    # 300 s at most), print wall seconds
    name=$1
    shift
    s=$(cut -d' ' -f1 /proc/uptime)
    ( timeout 300 /rig/vmm --kernel /rig/l2-kernel --initrd /rig/l2-initramfs.cpio.gz --vcpus 2 \
        --memory 512M --log-level info "$@" 2>&1; echo $? >/tmp/$name.status ) |
        tee /tmp/$name.log | sed 's/^/L2| /'
    st=$(cat /tmp/$name.status)
    [ "$st" = 0 ] || fail "$name: vmm exited with status $st (124: timed out after 300 s)"
    e=$(cut -d' ' -f1 /proc/uptime)
    grep -q "^L2-REPORT done" /tmp/$name.log || fail "$name: no L2 report"
    echo "BENCH $name wall_s=$(awk "BEGIN{print $e-$s}")"
}
get() { sed -n "s/^L2-REPORT $2=//p" /tmp/$1.log | tr -d '\r' | head -1; }

truncate -s 64M /tmp/emu.img
run_l2 emulated --cmdline "$CONSOLE l2.bench=1" --disk path=/tmp/emu.img
echo "BENCH emulated-virtio-blk read_MBps=$(get emulated bench_read_mbps) write_MBps=$(get emulated bench_write_mbps)"

BLK=$(find_pci 1af4 1042)
[ -n "$BLK" ] || fail "virtio-blk not found"
bind_vfio "$BLK"
# One pinning thread for the anon/memfd comparison; the default takes L1's CPUs (at most 4).
export VMM_DMA_MAP_THREADS=1
run_l2 passthrough --cmdline "$CONSOLE l2.bench=1" --device path=/sys/bus/pci/devices/$BLK --memory-backing anon
echo "BENCH passthrough-virtio-blk read_MBps=$(get passthrough bench_read_mbps) write_MBps=$(get passthrough bench_write_mbps)"
sed -n 's/.*info: \(passthrough: .*\)/BENCH anon \1/p; s/.*info: \(vCPUs start .*\)/BENCH anon \1/p' /tmp/passthrough.log
run_l2 passthrough-memfd --cmdline "$CONSOLE" --device path=/sys/bus/pci/devices/$BLK --memory-backing memfd
sed -n 's/.*info: \(passthrough: .*\)/BENCH memfd \1/p; s/.*info: \(vCPUs start .*\)/BENCH memfd \1/p' /tmp/passthrough-memfd.log
# Pinning on parallel threads (issue 13: keep it only if it shortens set-up). L1's vCPUs bound
# what can run at once: 2 on aarch64, 1 on x86_64.
for t in 2 4; do
    export VMM_DMA_MAP_THREADS=$t
    run_l2 passthrough-memfd-$t --cmdline "$CONSOLE" --device path=/sys/bus/pci/devices/$BLK --memory-backing memfd
    sed -n "s/.*info: \(passthrough: .*\)/BENCH memfd-$t \1/p" /tmp/passthrough-memfd-$t.log
done
unset VMM_DMA_MAP_THREADS
if [ "$ARCH" = aarch64 ]; then
    K=$(sed -n 's/.*rig\.bench_runs=\([0-9]*\).*/\1/p' /proc/cmdline)
    K=${K:-3}
    NESTED="iommu.passthrough=0 l2.bench=1"
    DEV="path=/sys/bus/pci/devices/$BLK"
    : >/tmp/nested-bench
    i=1
    while [ "$i" -le "$K" ]; do
        run_l2 s2-$i --cmdline "$CONSOLE l2.bench=1" --device "$DEV"
        run_l2 strict-$i --cmdline "$CONSOLE $NESTED iommu.strict=1" --device "$DEV,iommu=on"
        run_l2 lazy-$i --cmdline "$CONSOLE $NESTED iommu.strict=0" --device "$DEV,iommu=on"
        for c in s2 strict lazy; do
            stats=$(grep "vSMMU: [0-9]* commands" /tmp/$c-$i.log | tail -1 | sed 's/.*vSMMU: //')
            inv=$(echo "$stats" | sed -n 's/.* \([0-9]*\) invalidations forwarded in \([0-9]*\) batches.*/\1 \2/p')
            echo "$c $(get $c-$i bench_read_mbps) $(get $c-$i bench_write_mbps) ${inv:-0 0}" >>/tmp/nested-bench
            [ -n "$stats" ] && echo "BENCH $c-$i vSMMU: $stats"
        done
        i=$((i + 1))
    done
    med() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
    col() { awk -v c="$1" -v f="$2" '$1 == c {print $f}' /tmp/nested-bench | med; }
    for c in s2 strict lazy; do
        eval "${c}_r=$(col $c 2) ${c}_w=$(col $c 3)"
    done
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
    echo "BENCH nested (median of $K): S2 only read $s2_r write $s2_w MB/s; S1+S2 strict read $strict_r ($(ratio "$strict_r" "$s2_r")x) write $strict_w ($(ratio "$strict_w" "$s2_w")x); S1+S2 lazy read $lazy_r ($(ratio "$lazy_r" "$s2_r")x) write $lazy_w ($(ratio "$lazy_w" "$s2_w")x)"
    for c in strict lazy; do
        awk -v c="$c" '$1 == c {n += $4; b += $5} END {
            if (n > 0) printf "BENCH nested %s: %d invalidation commands forwarded in %d ioctls: %.0f ioctls per 1000\n", c, n, b, 1000 * b / n
            else printf "BENCH nested %s: no invalidations forwarded\n", c }' /tmp/nested-bench
    done
fi
echo "RIG-RESULT: PASS"

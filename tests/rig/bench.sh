#!/bin/sh
# Runs inside L1: benchmark figures for the issues (not a pass/fail test; prints BENCH lines).
#   L2 boot time (VMM start to the L2 init report), virtio-blk sequential throughput in L2
#   for our emulated virtio-blk and for QEMU's virtio-blk passed through, passthrough setup
#   and guest-RAM DMA map time for 512 MiB, anonymous vs memfd.
. /rig/l1-lib.sh
ARCH=$(uname -m)
case "$ARCH" in
    x86_64) CONSOLE="console=ttyS0 reboot=k panic=-1 no_timer_check i8042.noaux i8042.nomux i8042.dumbkbd" ;;
    aarch64) CONSOLE="console=ttyS0 earlycon panic=-1" ;;
esac
run_l2() { # NAME ARGS... : boot L2, keep its log in /tmp/NAME.log, print wall seconds
    name=$1
    shift
    s=$(cut -d' ' -f1 /proc/uptime)
    /rig/vmm --kernel /rig/l2-kernel --initrd /rig/l2-initramfs.cpio.gz --vcpus 2 --memory 512M \
        --log-level info "$@" > /tmp/$name.log 2>&1 || fail "$name: vmm failed: $(tail -3 /tmp/$name.log)"
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
run_l2 passthrough --cmdline "$CONSOLE l2.bench=1" --device path=/sys/bus/pci/devices/$BLK
echo "BENCH passthrough-virtio-blk read_MBps=$(get passthrough bench_read_mbps) write_MBps=$(get passthrough bench_write_mbps)"
sed -n 's/.*info: \(passthrough: .*\)/BENCH anon \1/p; s/.*info: \(vCPUs start .*\)/BENCH anon \1/p' /tmp/passthrough.log
run_l2 passthrough-memfd --cmdline "$CONSOLE" --device path=/sys/bus/pci/devices/$BLK --memfd
sed -n 's/.*info: \(passthrough: .*\)/BENCH memfd \1/p; s/.*info: \(vCPUs start .*\)/BENCH memfd \1/p' /tmp/passthrough-memfd.log
echo "RIG-RESULT: PASS"

#!/bin/sh
# Runs as /scenario.sh inside L1: our VMM boots the L2 Linux guest with 2 vCPUs and 512M;
# checks every value the guest reports against what the VMM was asked for.
set -u
VCPUS=2
MEM_MB=512
ARCH=$(uname -m)
case "$ARCH" in
    x86_64) CONSOLE="console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 pci=off no_timer_check i8042.noaux i8042.nomux i8042.dumbkbd" ;;
    aarch64) CONSOLE="console=ttyS0 earlycon panic=-1" ;;
esac
MARK="rig-l2-$$"
CMDLINE="$CONSOLE $MARK"
fail() { echo "RIG-RESULT: FAIL $*"; exit 1; }

[ -c /dev/kvm ] || fail "no /dev/kvm in L1"
echo "L1: starting L2 ($VCPUS vCPUs, ${MEM_MB}M) at $(cut -d' ' -f1 /proc/uptime)s"
START=$(cut -d' ' -f1 /proc/uptime)
# The L2 console streams to L1's console as it comes (prefixed), and is kept for the checks.
( /rig/vmm --kernel /rig/l2-kernel --initrd /rig/l2-initramfs.cpio.gz \
    --cmdline "$CMDLINE" --vcpus $VCPUS --memory ${MEM_MB}M 2>&1; echo $? > /tmp/l2.status ) \
    | tee /tmp/l2.log | sed 's/^/L2| /'
STATUS=$(cat /tmp/l2.status)
END=$(cut -d' ' -f1 /proc/uptime)
echo "L1: vmm exited with status $STATUS after $(awk "BEGIN{print $END-$START}")s"
[ "$STATUS" = 0 ] || fail "vmm exited with status $STATUS"
grep -q "Kernel panic" /tmp/l2.log && fail "L2 kernel panicked"

get() { sed -n "s/^L2-REPORT $1=//p" /tmp/l2.log | tr -d '\r' | head -1; }
grep -q "^L2-REPORT done" /tmp/l2.log || fail "L2 init never reported"
[ "$(get arch)" = "$ARCH" ] || fail "L2 arch '$(get arch)' != $ARCH"
[ "$(get nproc)" = "$VCPUS" ] || fail "L2 nproc '$(get nproc)' != $VCPUS"
MEMKB=$(get memtotal_kb)
# MemTotal excludes what the kernel keeps for itself: accept 85-100% of the RAM asked for.
[ -n "$MEMKB" ] && [ "$MEMKB" -le $((MEM_MB * 1024)) ] && [ "$MEMKB" -ge $((MEM_MB * 1024 * 85 / 100)) ] \
    || fail "L2 MemTotal ${MEMKB}kB not within 85-100% of ${MEM_MB}M"
case "$(get cmdline)" in
    *"$MARK"*) ;;
    *) fail "L2 cmdline '$(get cmdline)' lacks $MARK" ;;
esac
echo "l2-boot: arch=$ARCH nproc=$VCPUS memtotal_kb=$MEMKB"
echo "RIG-RESULT: PASS"

#!/bin/sh
# Runs as /scenario.sh inside L1: the L2 VMM (ours, or QEMU with rig.l2vmm=qemu, see
# l1-lib.sh) boots the L2 Linux guest with 2 vCPUs and 512M; checks every value the guest
# reports against what the VMM was asked for.
. /rig/l1-lib.sh
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

[ -c /dev/kvm ] || fail "no /dev/kvm in L1"
echo "L1: starting L2 under $(l2_vmm) ($VCPUS vCPUs, ${MEM_MB}M) at $(cut -d' ' -f1 /proc/uptime)s"
START=$(cut -d' ' -f1 /proc/uptime)
run_l2 "$CMDLINE" $VCPUS $MEM_MB
seccomp_verdict
STATUS=$(cat /tmp/l2.status)
END=$(cut -d' ' -f1 /proc/uptime)
echo "L1: $(l2_vmm) exited with status $STATUS after $(awk "BEGIN{print $END-$START}")s"
[ "$STATUS" = 0 ] || fail "$(l2_vmm) exited with status $STATUS"
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
echo "l2-boot: vmm=$(l2_vmm) arch=$ARCH nproc=$VCPUS memtotal_kb=$MEMKB"
echo "RIG-RESULT: PASS"

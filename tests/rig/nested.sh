#!/bin/sh
# Runs inside L1: nested stage-2 with a guest-visible vSMMUv3 (--device ...,iommu=on).
# aarch64: QEMU's virtio-blk goes to L2 behind our vSMMU; L2 boots with the IOMMU strict and
# translating (iommu.passthrough=0 iommu.strict=1), so its virtio driver's DMA goes through
# its own stage 1 (run by L1's SMMU for real) and then our stage 2. L2 reads L1's signature
# and writes a new one (DMA both ways), its MSI-X vectors fire (through the host MSI window
# its stage 1 maps 1:1), and the VMM's vSMMU counters show nested STE installs and forwarded
# invalidations. virtio-net goes behind it too, and the edu device, whose DMA L2 points at an
# IOVA it never mapped: the translation fault must come back to L2's event queue and be
# counted, and everything go on. The L2 run is repeated in the same L1 (rig.nested_runs=N on
# L1's command line, default 2). x86_64: there is no vSMMU; iommu=on must fail before boot with one
# error.
. /rig/l1-lib.sh
ARCH=$(uname -m)
BLK=$(find_pci 1af4 1042)
NET=$(find_pci 1af4 1041)
[ -n "$BLK" ] || fail "virtio-blk not found"

if [ "$ARCH" = x86_64 ]; then
    /rig/vmm --kernel /rig/l2-kernel --memory 256M \
        --device "path=/sys/bus/pci/devices/$BLK,id=disk,iommu=on" >/tmp/l2.log 2>&1
    STATUS=$?
    cat /tmp/l2.log
    [ "$STATUS" = 2 ] || fail "iommu=on on x86_64 exited with $STATUS, expected 2"
    grep -q "iommu=on needs a guest-visible SMMUv3" /tmp/l2.log || fail "no clear iommu=on error"
    echo "nested: x86_64 refuses iommu=on before boot"
    echo "RIG-RESULT: PASS"
    exit 0
fi

grep -q rig_force_canwbs=1 /proc/cmdline ||
    echo "nested: warning: L1 lacks arm_smmu_v3.rig_force_canwbs=1; IOMMU_VIOMMU_ALLOC will say EOPNOTSUPP"
D=/sys/bus/pci/devices/$BLK
DISK=/dev/$(ls $D/virtio*/block/ 2>/dev/null | head -1)
[ -b "$DISK" ] || fail "no block device for $BLK"
OLD_SIG="iommufd-vmm-nested-L1-$$"
NEW_SIG="iommufd-vmm-nested-L2-$$"
printf '%s\n' "$OLD_SIG" | dd of="$DISK" bs=512 count=1 conv=sync 2>/dev/null || fail "write $DISK"
sync
bind_vfio "$BLK"
[ -n "$NET" ] || fail "virtio-net not found"
bind_vfio "$NET"
# The edu device goes behind the vSMMU too: L2 points its DMA at an IOVA it never mapped, and
# the translation fault must travel L1's SMMU -> L1's kernel -> our vEVENTQ -> L2's event queue.
EDU=$(find_pci 1234 11e8)
[ -n "$EDU" ] || fail "edu (1234:11e8) not found"
bind_vfio "$EDU"
EDU_IOVA=0x0ff00000
echo "nested: wrote '$OLD_SIG' to $DISK ($BLK); host MSI window $(msi_window)"

# nested_run I EXPECT: one L2 with the three devices behind the vSMMU; L2 must read EXPECT
# from the disk and leave $NEW_SIG-I there. Runs rig.nested_runs= times (default 2) in the same
# L1: each VMM must leave the host so that the next one starts from scratch (a bench run once
# saw a later nested L2 hang in its first disk I/O; not seen again since).
nested_run() {
    i=$1 OLD_SIG=$2 NEW=$NEW_SIG-$1
    CMDLINE="console=ttyS0 earlycon panic=-1 iommu.passthrough=0 iommu.strict=1 l2.iommu=1 l2.new_sig=$NEW l2.edu_fault=$EDU_IOVA"
    run_l2 "$CMDLINE" 2 512 "$BLK=disk,iommu=on" "$NET=nic,iommu=on" "$EDU=edu,iommu=on"
    seccomp_verdict
    STATUS=$(cat /tmp/l2.status)
    echo "nested: $(l2_vmm) exited with status $STATUS"
    [ "$STATUS" = 0 ] || fail "$(l2_vmm) exited with status $STATUS"
    get() { sed -n "s/^L2-REPORT $1=//p" /tmp/l2.log | tr -d '\r' | head -1; }
    grep -q "^L2-REPORT done" /tmp/l2.log || fail "L2 init never reported"
    [ "$(get smmu_probed)" -gt 0 ] 2>/dev/null || fail "L2's arm-smmu-v3 driver did not probe our vSMMU"
    sed -n 's/^L2-REPORT iommu_group=/nested: L2 IOMMU group /p' /tmp/l2.log
    grep "^L2-REPORT iommu_group=" /tmp/l2.log | grep -q "type=DMA" ||
        fail "the disk is not in a translating (DMA) IOMMU group in L2"
    grep "^L2-REPORT iommu_group=" /tmp/l2.log | grep -q "direct" ||
        fail "L2 has no direct region for the host MSI window"
    [ "$(get disk_sig)" = "$OLD_SIG" ] || fail "L2 read '$(get disk_sig)' through its IOMMU, not '$OLD_SIG'"
    [ "$(get disk_write)" = ok ] || fail "L2 could not write the new signature"
    BLK_IRQS=$(get blk_irqs)
    [ -n "$BLK_IRQS" ] && [ "$BLK_IRQS" -gt 0 ] || fail "no virtio-blk interrupts in L2 (blk_irqs='$BLK_IRQS')"
    NET_IRQS=$(get net_irqs)
    [ -n "$NET_IRQS" ] && [ "$NET_IRQS" -gt 0 ] || fail "no virtio-net interrupts in L2 (net_irqs='$NET_IRQS')"
    [ "$(grep -c '^L2-REPORT iommu_group=.*type=DMA' /tmp/l2.log)" -ge 3 ] ||
        fail "not all three devices are in translating IOMMU groups in L2"
    # Teardown: every host object destroyed in reverse (a refused IOMMU_DESTROY is logged).
    if grep -q "cannot destroy" /tmp/l2.log; then
        grep "cannot destroy" /tmp/l2.log | sed 's/^/nested: /'
        fail "the VMM could not destroy all its iommufd objects on exit"
    fi
    # The VMM's last counters line, e.g. "vSMMU: 812 commands, 3 STE installs (0 failed), ...".
    STATS=$(grep "vSMMU: [0-9]* commands" /tmp/l2.log | tail -1 | sed 's/.*vSMMU: //')
    echo "nested: $STATS"
    INSTALLS=$(echo "$STATS" | sed -n 's/.* \([0-9]*\) STE installs.*/\1/p')
    FORWARDED=$(echo "$STATS" | sed -n 's/.* \([0-9]*\) invalidations forwarded.*/\1/p')
    [ "${INSTALLS:-0}" -gt 0 ] || fail "no nested STE installs counted"
    [ "${FORWARDED:-0}" -gt 0 ] || fail "no invalidations forwarded"
    # The fault: L2's driver logged it for the edu's StreamID at the IOVA we chose, the VMM counted
    # the event, and both went on (the disk still reads L2's signature; the VMM exited 0 above).
    FAULT=$(get edu_fault)
    echo "nested: L2 edu $(get edu_id); fault: $FAULT"
    case "$FAULT" in
        *"F_TRANSLATION client: "*" iova: $(printf '%#x' $EDU_IOVA) "*) ;;
        *) fail "L2 did not log the edu's translation fault at $EDU_IOVA (got '$FAULT')" ;;
    esac
    EVENTS=$(echo "$STATS" | sed -n 's/.* \([0-9]*\) events (.*/\1/p')
    [ "${EVENTS:-0}" -gt 0 ] || fail "the VMM counted no events"
    [ "$(get disk_sig_after_fault)" = "$NEW" ] ||
        fail "after the fault L2 reads '$(get disk_sig_after_fault)' from the disk, not '$NEW'"
    echo "nested: run $i: blk irqs $BLK_IRQS, net irqs $NET_IRQS, $INSTALLS STE installs, $FORWARDED invalidations, $EVENTS events"
}
RUNS=$(sed -n 's/.*rig\.nested_runs=\([0-9]*\).*/\1/p' /proc/cmdline)
RUNS=${RUNS:-2}
n=1
EXPECT=$OLD_SIG
while [ "$n" -le "$RUNS" ]; do
    nested_run "$n" "$EXPECT"
    EXPECT=$NEW_SIG-$n
    n=$((n + 1))
done
NEW_SIG=$EXPECT

unbind_vfio "$BLK"
unbind_vfio "$NET"
unbind_vfio "$EDU"
GOT=$(disk_sig "$BLK") || fail "the disk did not come back to L1's virtio-blk"
[ "$GOT" = "$NEW_SIG" ] || fail "L1 reads '$GOT' on the disk after L2, not '$NEW_SIG'"
echo "nested: L1 reads L2's signature '$GOT' after $RUNS run(s)"
echo "RIG-RESULT: PASS"

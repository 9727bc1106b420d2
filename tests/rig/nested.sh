#!/bin/sh
# Runs inside L1: nested stage-2 with a guest-visible vSMMUv3 (--device ...,iommu=on).
# aarch64: QEMU's virtio-blk goes to L2 behind our vSMMU; L2 boots with the IOMMU strict and
# translating (iommu.passthrough=0 iommu.strict=1), so its virtio driver's DMA goes through
# its own stage 1 (run by L1's SMMU for real) and then our stage 2. L2 reads L1's signature
# and writes a new one (DMA both ways), its MSI-X vectors fire (through the host MSI window
# its stage 1 maps 1:1), and the VMM's vSMMU counters show nested STE installs and forwarded
# invalidations. x86_64: there is no vSMMU; iommu=on must fail before boot with one error.
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
echo "nested: wrote '$OLD_SIG' to $DISK ($BLK); host MSI window $(msi_window)"

CMDLINE="console=ttyS0 earlycon panic=-1 iommu.passthrough=0 iommu.strict=1 l2.iommu=1 l2.new_sig=$NEW_SIG"
run_l2 "$CMDLINE" 2 512 "$BLK=disk,iommu=on" "$NET=nic,iommu=on"
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
[ "$(grep -c '^L2-REPORT iommu_group=.*type=DMA' /tmp/l2.log)" -ge 2 ] ||
    fail "not both devices are in translating IOMMU groups in L2"
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

unbind_vfio "$BLK"
GOT=$(disk_sig "$BLK") || fail "the disk did not come back to L1's virtio-blk"
[ "$GOT" = "$NEW_SIG" ] || fail "L1 reads '$GOT' on the disk after L2, not '$NEW_SIG'"
echo "nested: L1 reads L2's signature '$GOT'; blk irqs $BLK_IRQS, net irqs $NET_IRQS, $INSTALLS STE installs, $FORWARDED invalidations"
echo "RIG-RESULT: PASS"

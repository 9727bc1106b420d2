#!/bin/sh
# Smoke scenario for the TCG rigs; runs inside L1 as /scenario.sh (busybox sh).
#   bash resources/rig/run.sh x86_64 tests/rig/smoke.sh tests/rig/l1-lib.sh
#   bash resources/rig/run.sh aarch64 tests/rig/smoke.sh tests/rig/l1-lib.sh
# Checks /dev/iommu and /dev/kvm, binds edu (1234:11e8) and virtio-blk to vfio-pci
# through driver_override, checks the VFIO cdevs, prints the IOMMU groups' reserved
# regions (an "msi" window must be among them) and prints the PASS marker.

. /rig/l1-lib.sh

echo "smoke: $(uname -m) $(uname -r)"
[ -c /dev/iommu ] || fail "/dev/iommu missing"
echo "smoke: /dev/iommu ok"
[ -c /dev/kvm ] || fail "/dev/kvm missing"
echo "smoke: /dev/kvm ok"
if [ "$(uname -m)" = aarch64 ]; then
    # the rig-only kernel patch + arm_smmu_v3.rig_force_canwbs=1 (IOMMU_VIOMMU_ALLOC needs it)
    p=/sys/module/arm_smmu_v3/parameters/rig_force_canwbs
    [ "$(cat "$p" 2>/dev/null)" = Y ] || fail "$p is not Y (CANWBS rig patch missing?)"
    echo "smoke: arm_smmu_v3.rig_force_canwbs=Y"
fi

echo "smoke: PCI functions:"
for d in /sys/bus/pci/devices/*; do
    drv=-
    [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    echo "  $(basename "$d") $(cat "$d/vendor"):$(cat "$d/device") class $(cat "$d/class") driver $drv"
done

EDU=$(find_pci 1234 11e8)
[ -n "$EDU" ] || fail "edu device (1234:11e8) not found"
# virtio-blk: 1af4:1042 modern, 1af4:1001 transitional
BLK=$(find_pci 1af4 1042 1001)
[ -n "$BLK" ] || fail "virtio-blk device not found"
for bdf in $EDU $BLK; do
    bind_vfio "$bdf"
    d=/sys/bus/pci/devices/$bdf
    echo "smoke: $bdf ($(cat "$d/vendor"):$(cat "$d/device")) bound to vfio-pci, iommu group $(basename "$(readlink "$d/iommu_group")")"
done

n=0
for c in /dev/vfio/devices/vfio*; do
    [ -c "$c" ] || continue
    n=$((n + 1))
    name=$(basename "$c")
    echo "smoke: $c -> $(basename "$(readlink "/sys/class/vfio-dev/$name/device")")"
done
[ "$n" -ge 2 ] || fail "expected >= 2 VFIO cdevs in /dev/vfio/devices, found $n"

msi=0
for g in /sys/kernel/iommu_groups/*; do
    echo "smoke: iommu group $(basename "$g") type $(cat "$g/type" 2>/dev/null) devices: $(ls "$g/devices" | tr '\n' ' ')"
    while read -r start end type; do
        echo "  reserved $start $end $type"
        [ "$type" = msi ] && msi=1
    done <"$g/reserved_regions"
done
[ "$msi" = 1 ] || fail "no msi reserved region in any IOMMU group"

echo "RIG-RESULT: PASS"

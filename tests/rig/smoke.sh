#!/bin/sh
# Smoke scenario for the TCG rigs; runs inside L1 as /scenario.sh (busybox sh).
#   bash resources/rig/run.sh x86_64 tests/rig/smoke.sh
#   bash resources/rig/run.sh aarch64 tests/rig/smoke.sh
# Checks /dev/iommu and /dev/kvm, binds edu (1234:11e8) and virtio-blk to vfio-pci
# through driver_override, checks the VFIO cdevs, prints the IOMMU groups' reserved
# regions (an "msi" window must be among them) and prints the PASS marker.

fail() {
    echo "RIG-RESULT: FAIL ($*)"
    exit 1
}

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

# find_pci VENDOR DEVICE... : print the BDFs of the PCI functions with that ID.
find_pci() {
    ven=$1
    shift
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor")" = "0x$ven" ] || continue
        dev=$(cat "$d/device")
        for want in "$@"; do
            [ "$dev" = "0x$want" ] && basename "$d"
        done
    done
}

# bind_vfio BDF : move the function to vfio-pci.
bind_vfio() {
    d=/sys/bus/pci/devices/$1
    echo vfio-pci >"$d/driver_override" || fail "driver_override $1"
    if [ -e "$d/driver" ]; then
        echo "$1" >"$d/driver/unbind" || fail "unbind $1"
    fi
    echo "$1" >/sys/bus/pci/drivers_probe
    [ -e "$d/driver" ] || fail "$1 has no driver after probe"
    drv=$(basename "$(readlink "$d/driver")")
    [ "$drv" = vfio-pci ] || fail "$1 bound to $drv, not vfio-pci"
    echo "smoke: $1 ($(cat "$d/vendor"):$(cat "$d/device")) bound to vfio-pci, iommu group $(basename "$(readlink "$d/iommu_group")")"
}

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

# Shared helpers for scenarios that run inside L1 (busybox sh); tests/rig.sh puts this file
# at /rig/l1-lib.sh and scenarios source it.

fail() {
    echo "RIG-RESULT: FAIL $*"
    exit 1
}

# find_pci VENDOR DEVICE... : the BDFs of the PCI functions with one of these IDs.
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

# bind_vfio BDF : move the function to vfio-pci through driver_override.
bind_vfio() {
    d=/sys/bus/pci/devices/$1
    echo vfio-pci >"$d/driver_override" || fail "driver_override $1"
    if [ -e "$d/driver" ]; then
        echo "$1" >"$d/driver/unbind" || fail "unbind $1"
    fi
    echo "$1" >/sys/bus/pci/drivers_probe
    drv=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    [ "$drv" = vfio-pci ] || fail "$1 bound to '$drv', not vfio-pci"
}

# msi_window : "FIRST LAST" (hex) of the first msi reserved region of any IOMMU group.
msi_window() {
    cat /sys/kernel/iommu_groups/*/reserved_regions 2>/dev/null | awk '$3 == "msi" {print $1, $2; exit}'
}

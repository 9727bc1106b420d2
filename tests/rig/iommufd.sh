#!/bin/sh
# Runs inside L1: the iommufd layer against the real kernel.
# 1. The conformance suite (the same cases the host runs against the model) on /dev/iommu with
#    the edu device's VFIO cdev.
# 2. vmm --print-memory-map with edu and virtio-blk passed through: every planned RAM region
#    must stay out of the host's MSI window, read from the kernel.
. /rig/l1-lib.sh
ARCH=$(uname -m)
[ -c /dev/iommu ] || fail "/dev/iommu missing"
EDU=$(find_pci 1234 11e8)
BLK=$(find_pci 1af4 1042 1001)
[ -n "$EDU" ] && [ -n "$BLK" ] || fail "edu or virtio-blk not found"
bind_vfio "$EDU"
bind_vfio "$BLK"
CDEV=/dev/vfio/devices/$(ls /sys/bus/pci/devices/$EDU/vfio-dev/)
case "$ARCH" in
    x86_64) EXPECT="--expect-iommu vtd --expect-nesting no" ;;
    aarch64) EXPECT="--expect-iommu smmuv3 --expect-nesting yes" ;;
esac
/rig/iommufd-conformance --vfio-cdev "$CDEV" $EXPECT > /tmp/conf.log 2>&1
CONF=$?
sed 's/^/conformance| /' /tmp/conf.log
[ "$CONF" = 0 ] || fail "conformance suite failed (status $CONF)"
tail -n 1 /tmp/conf.log | grep -q "^[0-9]* passed, 0 failed$" || fail "conformance summary missing"

set -- $(msi_window)
[ -n "${1:-}" ] || fail "no msi reserved region in any IOMMU group"
MSI_FIRST=$(printf '%d' "$1")
MSI_LAST=$(printf '%d' "$2")
echo "iommufd: host MSI window $1-$2"
/rig/vmm --print-memory-map --memory 4G \
    --device path=/sys/bus/pci/devices/$EDU --device path=/sys/bus/pci/devices/$BLK,id=blk \
    > /tmp/plan.log 2>&1 || { cat /tmp/plan.log; fail "print-memory-map failed"; }
sed 's/^/plan| /' /tmp/plan.log
grep -q "reserved region .* msi" /tmp/plan.log || fail "the plan did not read the msi region"
# Region rows: "  N    0xFIRST   0xLAST   size".
ROWS=0
for r in $(awk '$1 ~ /^[0-9]+$/ && $2 ~ /^0x/ {print $2 ":" $3}' /tmp/plan.log); do
    F=$(printf '%d' "${r%%:*}")
    L=$(printf '%d' "${r##*:}")
    ROWS=$((ROWS + 1))
    if [ "$F" -le "$MSI_LAST" ] && [ "$L" -ge "$MSI_FIRST" ]; then
        fail "RAM region ${r} overlaps the MSI window"
    fi
done
[ "$ROWS" -gt 0 ] || fail "no RAM regions in the plan"
echo "iommufd: conformance passed; $ROWS RAM regions clear of the MSI window"
echo "RIG-RESULT: PASS"

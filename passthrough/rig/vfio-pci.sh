#!/bin/sh
# Runs inside L1 (resources/rig/run.sh): the passthrough stack (PassthroughDevice, the
# virtualized PCI function, MSI/MSI-X wiring, guest RAM DMA, teardown) against QEMU's edu
# and virtio-blk bound to vfio-pci. From the repository root:
#
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p passthrough \
#       --bin vfio-pci-probe --target x86_64-unknown-linux-gnu
#   bash resources/rig/run.sh x86_64 passthrough/rig/vfio-pci.sh \
#       target/x86_64-unknown-linux-gnu/release/vfio-pci-probe tests/rig/l1-lib.sh
. /rig/l1-lib.sh
EDU=$(find_pci 1234 11e8)
BLK=$(find_pci 1af4 1042 1001)
[ -n "$EDU" ] && [ -n "$BLK" ] || fail "edu or virtio-blk not found"
bind_vfio "$EDU"
bind_vfio "$BLK"
/rig/vfio-pci-probe --edu "/sys/bus/pci/devices/$EDU" --virtio "/sys/bus/pci/devices/$BLK" \
    > /tmp/probe.log 2>&1
STATUS=$?
sed 's/^/probe| /' /tmp/probe.log
[ "$STATUS" = 0 ] || fail "vfio-pci-probe failed (status $STATUS)"
echo "vfio-pci: passthrough of edu (MSI, DMA) and virtio-blk (MSI-X), with teardown"
echo "RIG-RESULT: PASS"

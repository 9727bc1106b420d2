#!/bin/sh
# Runs inside L1: VFIO passthrough end to end. L1 writes a known signature to QEMU's
# virtio-blk (its scratch image), binds it and virtio-net to vfio-pci, and our VMM boots L2
# with both passed through and no emulated disk. L2's own virtio drivers read the signature,
# write a new one and sync, and bring the NIC up so its MSI-X vectors fire. After L2 exits, L1
# takes the disk back and checks the new signature is on it.
. /rig/l1-lib.sh
ARCH=$(uname -m)
OLD_SIG="iommufd-vmm-signature-L1-$$"
NEW_SIG="iommufd-vmm-signature-L2-$$"
BLK=$(find_pci 1af4 1042)
NET=$(find_pci 1af4 1041)
[ -n "$BLK" ] && [ -n "$NET" ] || fail "virtio-blk or virtio-net not found"
DISK=/dev/$(ls /sys/bus/pci/devices/$BLK/virtio*/block/ 2>/dev/null | head -1)
[ -b "$DISK" ] || fail "no block device for $BLK"
printf '%s\n' "$OLD_SIG" | dd of="$DISK" bs=512 count=1 conv=sync 2>/dev/null || fail "write $DISK"
sync
echo "passthrough: wrote '$OLD_SIG' to $DISK ($BLK)"
bind_vfio "$BLK"
bind_vfio "$NET"

case "$ARCH" in
    x86_64) CONSOLE="console=ttyS0 reboot=k panic=-1 no_timer_check i8042.noaux i8042.nomux i8042.dumbkbd" ;;
    aarch64) CONSOLE="console=ttyS0 earlycon panic=-1" ;;
esac
START=$(cut -d' ' -f1 /proc/uptime)
run_l2 "$CONSOLE l2.new_sig=$NEW_SIG" 2 512 "$BLK=disk" "$NET=nic"
seccomp_verdict
STATUS=$(cat /tmp/l2.status)
END=$(cut -d' ' -f1 /proc/uptime)
echo "passthrough: $(l2_vmm) exited with status $STATUS after $(awk "BEGIN{print $END-$START}")s"
[ "$STATUS" = 0 ] || fail "$(l2_vmm) exited with status $STATUS"
get() { sed -n "s/^L2-REPORT $1=//p" /tmp/l2.log | tr -d '\r' | head -1; }
# --memory-backing auto: a memfd pinned by file where the kernel has IOMMU_IOAS_MAP_FILE
# (6.13+), anonymous memory elsewhere, and where transparent huge pages are on for anonymous
# memory but not for shmem.
if [ "$(l2_vmm)" = vmm ]; then
    KV=$(uname -r | awk -F. '{print $1 * 1000 + $2}')
    THP=/sys/kernel/mm/transparent_hugepage
    THP_ANON_ONLY=no
    if grep -qE '\[(always|madvise)\]' "$THP/enabled" 2>/dev/null &&
        ! grep -qE '\[(always|within_size|advise|force)\]' "$THP/shmem_enabled" 2>/dev/null; then
        THP_ANON_ONLY=yes
    fi
    echo "passthrough: kernel $(uname -r), THP for anonymous memory only: $THP_ANON_ONLY"
    if [ "$KV" -ge 6013 ] && [ "$THP_ANON_ONLY" = no ]; then WANT="memfd, IOMMU_IOAS_MAP_FILE"; else WANT="anonymous, IOMMU_IOAS_MAP"; fi
    grep -q "mapped for DMA in .* ($WANT" /tmp/l2.log ||
        fail "guest RAM not pinned as '$WANT' on $(uname -r): $(grep -o 'mapped for DMA in .*' /tmp/l2.log)"
    echo "passthrough: guest RAM $(grep -o 'mapped for DMA in .*' /tmp/l2.log | head -1)"
fi
grep -q "^L2-REPORT done" /tmp/l2.log || fail "L2 init never reported"
[ "$(get disk_sig)" = "$OLD_SIG" ] || fail "L2 read '$(get disk_sig)' from the passed-through disk, not '$OLD_SIG'"
[ "$(get disk_write)" = ok ] || fail "L2 could not write the new signature"
NET_IRQS=$(get net_irqs)
[ -n "$NET_IRQS" ] && [ "$NET_IRQS" -gt 0 ] || fail "no virtio-net interrupts in L2 (net_irqs='$NET_IRQS')"
BLK_IRQS=$(get blk_irqs)
[ -n "$BLK_IRQS" ] && [ "$BLK_IRQS" -gt 0 ] || fail "no virtio-blk interrupts in L2 (blk_irqs='$BLK_IRQS')"
sed -n 's/^L2-REPORT irq=/passthrough: L2 \/proc\/interrupts: /p' /tmp/l2.log

# Take the disk back in L1 and read what L2 wrote.
unbind_vfio "$BLK"
GOT=$(disk_sig "$BLK") || fail "the disk did not come back to L1's virtio-blk"
[ "$GOT" = "$NEW_SIG" ] || fail "L1 reads '$GOT' on the disk after L2, not '$NEW_SIG'"
echo "passthrough: L1 reads L2's signature '$GOT'; net irqs $NET_IRQS, blk irqs $BLK_IRQS"
echo "RIG-RESULT: PASS"

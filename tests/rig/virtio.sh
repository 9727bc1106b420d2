#!/bin/sh
# Runs inside L1: our emulated PCI devices with a real Linux guest. The VMM boots L2 with a
# virtio-blk over an image file (holding a known signature) and a virtio-rng. L2's drivers
# find both on PCI, read the signature, write a new one and sync, and read /dev/hwrng; their
# MSI-X vectors must fire (ITS-MSI on aarch64). After the VM exits, the new signature must be
# in the image file.
. /rig/l1-lib.sh
ARCH=$(uname -m)
IMG=/tmp/l2-disk.img
OLD_SIG="iommufd-vmm-virtio-L1-$$"
NEW_SIG="iommufd-vmm-virtio-L2-$$"
truncate -s 16M "$IMG"
printf '%s\n' "$OLD_SIG" | dd of="$IMG" bs=512 count=1 conv=sync,notrunc 2>/dev/null || fail "write $IMG"
case "$ARCH" in
    x86_64) CONSOLE="console=ttyS0 reboot=k panic=-1 no_timer_check i8042.noaux i8042.nomux i8042.dumbkbd" ;;
    aarch64) CONSOLE="console=ttyS0 earlycon panic=-1" ;;
esac
rm -f /tmp/l2.status
seccomp_sample virtio-rng &
( /rig/vmm --kernel /rig/l2-kernel --initrd /rig/l2-initramfs.cpio.gz \
    --cmdline "$CONSOLE l2.new_sig=$NEW_SIG" --vcpus 2 --memory 512M \
    --disk path=$IMG --rng 2>&1; echo $? > /tmp/l2.status ) | tee /tmp/l2.log | sed 's/^/L2| /'
wait $!
seccomp_verdict
STATUS=$(cat /tmp/l2.status)
[ "$STATUS" = 0 ] || fail "vmm exited with status $STATUS"
get() { sed -n "s/^L2-REPORT $1=//p" /tmp/l2.log | tr -d '\r' | head -1; }
grep -q "^L2-REPORT done" /tmp/l2.log || fail "L2 init never reported"
[ "$(get disk_sig)" = "$OLD_SIG" ] || fail "L2 read '$(get disk_sig)', not '$OLD_SIG'"
[ "$(get disk_write)" = ok ] || fail "L2 could not write the new signature"
[ "$(get hwrng_bytes)" = 16 ] || fail "L2 read '$(get hwrng_bytes)' bytes from /dev/hwrng, not 16"
BLK_IRQS=$(get blk_irqs)
RNG_IRQS=$(get input_irqs)
[ -n "$BLK_IRQS" ] && [ "$BLK_IRQS" -gt 0 ] || fail "no virtio-blk MSI-X interrupts in L2"
[ -n "$RNG_IRQS" ] && [ "$RNG_IRQS" -gt 0 ] || fail "no virtio-rng MSI-X interrupts in L2"
case "$ARCH" in
    aarch64) grep -q "^L2-REPORT irq=.*ITS-PCI-MSIX" /tmp/l2.log || fail "no ITS-MSI interrupts in L2" ;;
    x86_64) grep -q "^L2-REPORT irq=.*PCI-MSIX" /tmp/l2.log || fail "no PCI-MSIX interrupts in L2" ;;
esac
sed -n 's/^L2-REPORT irq=/virtio: L2 \/proc\/interrupts: /p' /tmp/l2.log
GOT=$(dd if="$IMG" bs=512 count=1 2>/dev/null | head -n 1 | tr -d '\0')
[ "$GOT" = "$NEW_SIG" ] || fail "the image holds '$GOT' after L2, not '$NEW_SIG'"
echo "virtio: image holds L2's signature; blk irqs $BLK_IRQS, rng irqs $RNG_IRQS, hwrng ($(get hwrng_rng)) gave 16 bytes"
echo "RIG-RESULT: PASS"

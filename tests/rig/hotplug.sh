#!/bin/sh
# Runs inside L1: PCIe native hotplug of passthrough devices through the API. Our VMM boots
# L2 with no passthrough device, an API socket and its default hotplug slots (root ports).
# vmm-remote then adds QEMU's virtio-blk: L2's pciehp powers the slot on, its virtio-blk
# driver reads L1's signature and writes its own; remove-device takes it out, and L1 reads
# L2's signature on the disk; a re-add works. Then virtio-net is added and removed
# rig.hp_cycles times (default 20) while the disk stays: the VMM's open fds and its
# "in use" line (devices, MSI GSIs, KVM routes, BAR memslots, allowed IOVA ranges) must be
# what they were before the first cycle, and the disk must still work afterwards.
# Prints the add and remove latencies (vmm-remote call to answer).
. /rig/l1-lib.sh
# The VMM's log goes to its own file: on one stream its lines would cut L2's console lines
# that the steps below wait for.
VMMLOG=/tmp/l2.vmm.log
fail() {
    tail -n 40 "$VMMLOG" 2>/dev/null | sed 's/^/VMM| /'
    echo "RIG-RESULT: FAIL $*"
    exit 1
}
ARCH=$(uname -m)
OLD_SIG="iommufd-vmm-hotplug-L1-$$"
NEW_SIG="iommufd-vmm-hotplug-L2-$$"
CYCLES=$(sed -n 's/.*rig\.hp_cycles=\([0-9]*\).*/\1/p' /proc/cmdline)
CYCLES=${CYCLES:-20}
SOCK=/tmp/api.sock
R="/rig/vmm-remote --api-socket $SOCK"
[ -x /rig/vmm-remote ] || fail "no /rig/vmm-remote in L1"
BLK=$(find_pci 1af4 1042)
NET=$(find_pci 1af4 1041)
[ -n "$BLK" ] && [ -n "$NET" ] || fail "virtio-blk or virtio-net not found"

disk_of() { echo "/dev/$(ls /sys/bus/pci/devices/$1/virtio*/block/ 2>/dev/null | head -1)"; }
DISK=$(disk_of "$BLK")
[ -b "$DISK" ] || fail "no block device for $BLK"
printf '%s\n' "$OLD_SIG" | dd of="$DISK" bs=512 count=1 conv=sync 2>/dev/null || fail "write $DISK"
sync
bind_vfio "$BLK"
bind_vfio "$NET"

case "$ARCH" in
    x86_64) CONSOLE="console=ttyS0 reboot=k panic=-1 no_timer_check i8042.noaux i8042.nomux i8042.dumbkbd" ;;
    aarch64) CONSOLE="console=ttyS0 earlycon panic=-1" ;;
esac
# x86_64: one L2 vCPU. The x86 L1 has one vCPU, so two L2 vCPUs take turns on it; over the
# minutes this scenario runs, an L2 vCPU spinning with interrupts off on a lock its preempted
# sibling holds livelocks L1: QEMU-TCG never turns L1's pending timer interrupt into the
# #VMEXIT that would let L1 run the sibling (caught by the rig's stall watch; evidence in
# docs/rig-reliability.md). With one L2 vCPU that wait cannot arise. aarch64 keeps two.
L2_VCPUS=2
[ "$ARCH" = x86_64 ] && L2_VCPUS=1
rm -f /tmp/l2.status /tmp/l2.log
seccomp_sample vmm_api &
SAMPLER=$!
( /rig/vmm --kernel /rig/l2-kernel --initrd /rig/l2-initramfs.cpio.gz \
    --cmdline "$CONSOLE l2.hp_sig=$NEW_SIG l2.hp_cycles=$CYCLES" --vcpus "$L2_VCPUS" --memory 512M \
    --log-level info --api-socket "$SOCK" 2>"$VMMLOG"
  echo $? >/tmp/l2.status ) | tee /tmp/l2.log | sed 's/^/L2| /' &
l2_watch &
WATCH=$!
trap 'kill $WATCH 2>/dev/null' EXIT

# wait_log SECONDS PATTERN : until a line of L2's console/VMM log matches (grep -E).
wait_log() {
    n=$(($1 * 5))
    while ! grep -qE "$2" /tmp/l2.log 2>/dev/null; do
        [ -f /tmp/l2.status ] && fail "the VMM exited (status $(cat /tmp/l2.status)) while waiting for '$2'"
        n=$((n - 1))
        [ "$n" -gt 0 ] || fail "no '$2' from L2 within $1 s"
        sleep 0.2
    done
}
now_ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
# remote WHAT ARGS... : a vmm-remote call that must succeed; its time (ms) goes to $LAST_MS.
remote() {
    what=$1
    shift
    t0=$(now_ms)
    out=$($R "$@" 2>&1) || fail "vmm-remote $*: $out"
    LAST_MS=$(($(now_ms) - t0))
    echo "hotplug: $what in ${LAST_MS} ms: $out"
}
fds() { ls "/proc/$(pidof vmm)/fd" 2>/dev/null | wc -l; }
usage() { grep -a "hotplug: device .*; in use:" "$VMMLOG" | tail -n 1 | sed 's/.*in use: //'; }

wait_log 240 "^L2-HP ready"
wait $SAMPLER
seccomp_verdict
grep -a "^L2-HP ready" /tmp/l2.log | sed 's/^/hotplug: /'
$R ping >/dev/null || fail "vmm.ping does not answer"

remote "add disk" add-device "path=/sys/bus/pci/devices/$BLK,id=disk"
ADD_MS=$LAST_MS
wait_log 120 "^L2-HP blk "
line=$(grep -a "^L2-HP blk sig=" /tmp/l2.log | tr -d '\r')
[ "$line" = "L2-HP blk sig=$OLD_SIG write=ok" ] || fail "L2 on the hot-added disk: '$line' (wanted sig=$OLD_SIG write=ok)"
remote "remove disk" remove-device disk
REMOVE_MS=$LAST_MS
wait_log 120 "^L2-HP blk (gone|never)"
grep -q "^L2-HP blk gone" /tmp/l2.log || fail "the disk stayed in L2 after remove-device"

# L1 takes the disk back and reads what L2 wrote, then lends it again.
unbind_vfio "$BLK"
GOT=$(disk_sig "$BLK") || fail "the disk did not come back to L1's virtio-blk"
[ "$GOT" = "$NEW_SIG" ] || fail "L1 reads '$GOT' after the removal, not L2's '$NEW_SIG'"
echo "hotplug: L1 reads L2's signature after remove-device"
bind_vfio "$BLK"
remote "re-add disk" add-device "path=/sys/bus/pci/devices/$BLK,id=disk"
wait_log 120 "^L2-HP blk (back|never)"
grep -aq "^L2-HP blk back sig=$NEW_SIG" /tmp/l2.log || fail "re-added disk: $(grep -a '^L2-HP blk back' /tmp/l2.log)"

FDS0=$(fds)
USE0=$(usage)
echo "hotplug: before the NIC cycles: $FDS0 fds; in use: $USE0"
ADDS=""
REMOVES=""
i=1
while [ "$i" -le "$CYCLES" ]; do
    remote "add nic ($i)" add-device "path=/sys/bus/pci/devices/$NET,id=nic"
    ADDS="$ADDS $LAST_MS"
    wait_log 150 "^L2-HP net (up|never came up) $i( |$)"
    grep -aq "^L2-HP net up $i " /tmp/l2.log || fail "cycle $i: the NIC did not come up in L2"
    remote "remove nic ($i)" remove-device nic
    REMOVES="$REMOVES $LAST_MS"
    wait_log 150 "^L2-HP net (down|never went) $i"
    grep -aq "^L2-HP net down $i" /tmp/l2.log || fail "cycle $i: the NIC stayed in L2"
    i=$((i + 1))
done
FDS1=$(fds)
USE1=$(usage)
echo "hotplug: after $CYCLES NIC cycles: $FDS1 fds; in use: $USE1"
[ "$FDS1" = "$FDS0" ] || fail "the VMM's open fds went from $FDS0 to $FDS1 over $CYCLES cycles"
[ "$USE1" = "$USE0" ] || fail "the VMM holds '$USE1' after the cycles, '$USE0' before"

wait_log 120 "^L2-HP blk final"
grep -aq "^L2-HP blk final write=ok sig=$NEW_SIG-final" /tmp/l2.log ||
    fail "the disk after the NIC cycles: $(grep -a '^L2-HP blk final' /tmp/l2.log)"
wait_log 120 "^L2-REPORT done"
n=300
while [ ! -f /tmp/l2.status ] && [ "$n" -gt 0 ]; do sleep 0.2; n=$((n - 1)); done
STATUS=$(cat /tmp/l2.status 2>/dev/null)
[ "$STATUS" = 0 ] || fail "the VMM exited with status '${STATUS:-none}'"
unbind_vfio "$BLK"
GOT=$(disk_sig "$BLK") || fail "the disk did not come back to L1's virtio-blk"
[ "$GOT" = "$NEW_SIG-final" ] || fail "L1 reads '$GOT' at the end, not '$NEW_SIG-final'"
med() { echo "$@" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo "hotplug: latency (vmm-remote call to answer): disk add $ADD_MS ms, remove $REMOVE_MS ms; nic add median $(med $ADDS) ms, remove median $(med $REMOVES) ms over $CYCLES cycles"
grep -a "in use:" "$VMMLOG" | tail -n 2 | sed 's/^/VMM| /'
echo "RIG-RESULT: PASS"

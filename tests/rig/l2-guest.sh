#!/bin/sh
# Runs as /scenario.sh inside the L2 guest (our VMM's guest): reports what the guest sees,
# one "L2-REPORT key=value" line each, then ends the VM the way the arch does it.
# The kernel writes to the same console as we do, and a printk in the middle of one of our
# lines splits it (a CI run lost "L2-HP blk back sig=..." to a pcieport line that way). From here
# on only warnings and worse reach the console (panics still do); the rest stays in dmesg,
# which the failure paths below print.
echo 5 >/proc/sys/kernel/printk
dmesg_tail() { dmesg | tail -n "${1:-30}" | sed 's/^/L2-DMESG: /'; }
echo "L2-REPORT arch=$(uname -m)"
echo "L2-REPORT nproc=$(nproc)"
echo "L2-REPORT memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
echo "L2-REPORT cmdline=$(cat /proc/cmdline)"
# Passthrough checks when the VMM gave us devices (rig scenario passthrough.sh).
NEW_SIG=$(sed -n 's/.*l2.new_sig=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$NEW_SIG" ]; then
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
    if [ -b /dev/vda ]; then
        echo "L2-REPORT disk_sig=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1 | tr -d '\0')"
        if printf '%s\n' "$NEW_SIG" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null && sync; then
            echo "L2-REPORT disk_write=ok"
        else
            echo "L2-REPORT disk_write=failed"
        fi
    else
        echo "L2-REPORT disk_sig=none (no /dev/vda)"
    fi
    NETIF=$(ls /sys/class/net | grep -v '^lo$' | head -1)
    if [ -n "$NETIF" ]; then
        ip link set "$NETIF" up
        udhcpc -i "$NETIF" -n -q -t 3 -T 1 >/dev/null 2>&1
        sleep 1
    fi
    if [ -c /dev/hwrng ]; then
        echo "L2-REPORT hwrng_bytes=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | wc -c)"
        echo "L2-REPORT hwrng_rng=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
    fi
    grep -i virtio /proc/interrupts | while read -r line; do echo "L2-REPORT irq=$line"; done
    # Sum the per-CPU counts of the virtio-pci MSI-X lines of each driver.
    sum_irqs() {
        grep -iE "$1" /proc/interrupts | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; else break} END {print s + 0}'
    }
    echo "L2-REPORT blk_irqs=$(sum_irqs 'virtio[0-9]+-req')"
    echo "L2-REPORT net_irqs=$(sum_irqs 'virtio[0-9]+-(input|output)')"
    echo "L2-REPORT input_irqs=$(sum_irqs 'virtio[0-9]+-input')"
fi
# Hotplug (rig scenario hotplug.sh): L1 adds and removes passed-through devices through the
# API while this runs; each step is a "L2-HP ..." line L1 waits for. The disk comes, is read
# and written, goes, comes back; then the NIC comes and goes l2.hp_cycles times; then the disk
# (plugged all along) is written once more, to show its DMA survived the NIC's cycles.
HP_SIG=$(sed -n 's/.*l2.hp_sig=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$HP_SIG" ]; then
    CYCLES=$(sed -n 's/.*l2.hp_cycles=\([0-9]*\).*/\1/p' /proc/cmdline)
    # until_ SECONDS COMMAND... : polls COMMAND every 0.2 s; fails after SECONDS.
    until_() {
        n=$(($1 * 5))
        shift
        while ! "$@"; do
            n=$((n - 1))
            [ "$n" -gt 0 ] || return 1
            sleep 0.2
        done
    }
    has_pci() { # DEVICE-ID of a virtio function present
        for d in /sys/bus/pci/devices/*; do
            [ "$(cat "$d/vendor" 2>/dev/null)" = 0x1af4 ] && [ "$(cat "$d/device" 2>/dev/null)" = "0x$1" ] && return 0
        done
        return 1
    }
    no_pci() { ! has_pci "$1"; }
    has_disk() { [ -b /dev/vda ]; }
    no_disk() { [ ! -b /dev/vda ]; }
    has_netif() { ls /sys/class/net | grep -qv '^lo$'; }
    sig() { dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1 | tr -d '\0'; }
    put_sig() { printf '%s\n' "$1" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null && sync && echo ok || echo failed; }
    echo "L2-HP ready slots=$(ls /sys/bus/pci/slots 2>/dev/null | wc -l) pciehp_ports=$(ls -d /sys/bus/pci_express/devices/*pciehp* 2>/dev/null | wc -l)"
    if until_ 120 has_disk; then
        echo "L2-HP blk sig=$(sig) write=$(put_sig "$HP_SIG")"
    else
        echo "L2-HP blk never appeared"
        dmesg_tail
    fi
    until_ 120 no_disk && echo "L2-HP blk gone" || { echo "L2-HP blk never went"; dmesg_tail; }
    until_ 120 has_disk && echo "L2-HP blk back sig=$(sig)" || { echo "L2-HP blk never came back"; dmesg_tail; }
    i=1
    while [ "$i" -le "${CYCLES:-0}" ]; do
        if until_ 120 has_pci 1041 && until_ 30 has_netif; then
            echo "L2-HP net up $i if=$(ls /sys/class/net | grep -v '^lo$' | head -1)"
        else
            echo "L2-HP net never came up $i"
            dmesg_tail
            break
        fi
        until_ 120 no_pci 1041 && echo "L2-HP net down $i" || { echo "L2-HP net never went $i"; dmesg_tail; break; }
        i=$((i + 1))
    done
    echo "L2-HP blk final write=$(put_sig "$HP_SIG-final") sig=$(sig)"
    echo "L2-REPORT blk_irqs=$(grep -iE 'virtio[0-9]+-req' /proc/interrupts | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; else break} END {print s + 0}')"
    dmesg | grep -iE "pciehp|virtio_net|virtio-pci" | tail -n 24 | sed "s/^/L2-HP dmesg: /"
fi
# What the guest's IOMMU looks like when asked (rig scenario nested.sh).
if grep -q "l2.iommu=1" /proc/cmdline; then
    echo "L2-REPORT smmu_probed=$(dmesg | grep -cE 'arm-smmu-v3 [^ ]+: (ias|oas) [0-9]+-bit')"
    for g in /sys/kernel/iommu_groups/*; do
        [ -d "$g" ] || continue
        echo "L2-REPORT iommu_group=$(basename "$g") type=$(cat "$g/type" 2>/dev/null) devices=$(ls "$g/devices" | tr '\n' ' ')resv=$(tr '\n' ';' <"$g/reserved_regions")"
    done
    # A fault reaches us (l2.edu_fault=IOVA): the edu device has no driver here, so it sits in
    # its default DMA domain with nothing mapped but the MSI window. Point its DMA engine at IOVA
    # (RAM -> its buffer at 0x40000, 8 bytes) and start it by hand: the read misses our stage 1,
    # L1's SMMU records a translation fault, L1's kernel queues it on the VMM's vEVENTQ and the
    # VMM writes it to our event queue, where arm-smmu-v3 logs it with the edu's StreamID.
    EDU_IOVA=$(sed -n 's/.*l2.edu_fault=\([0-9a-fx]*\).*/\1/p' /proc/cmdline)
    if [ -n "$EDU_IOVA" ]; then
        EDU=
        for d in /sys/bus/pci/devices/*; do
            [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && EDU=$d
        done
        if [ -z "$EDU" ]; then
            echo "L2-REPORT edu_fault=no edu device"
        elif [ ! -c /dev/mem ]; then
            echo "L2-REPORT edu_fault=no /dev/mem (the L2 kernel needs CONFIG_DEVMEM)"
        else
            BDF=$(basename "$EDU")
            BAR=$(head -n 1 "$EDU/resource" | cut -d' ' -f1)
            reg() { printf '0x%x' $((BAR + $1)); }
            # Memory decoding and bus mastering on (command register, offset 4).
            printf '\006\000' | dd of="$EDU/config" bs=1 seek=4 count=2 conv=notrunc 2>/dev/null
            echo "L2-REPORT edu_id=$(devmem "$(reg 0)" 32) bdf=$BDF bar=$BAR"
            devmem "$(reg 0x80)" 32 "$EDU_IOVA"
            devmem "$(reg 0x88)" 32 0x40000
            devmem "$(reg 0x90)" 32 8
            devmem "$(reg 0x98)" 32 1
            LINE=
            for i in 1 2 3 4 5 6 7 8 9 10; do
                LINE=$(dmesg | grep -m 1 "event: F_TRANSLATION client: $BDF ")
                [ -n "$LINE" ] && break
                sleep 1
            done
            echo "L2-REPORT edu_dma_cmd=$(devmem "$(reg 0x98)" 32)"
            if [ -n "$LINE" ]; then
                echo "L2-REPORT edu_fault=${LINE#*] }"
            else
                echo "L2-REPORT edu_fault=none"
                dmesg_tail 20
            fi
            # And the guest goes on: the disk still answers through its own stage 1.
            echo 3 >/proc/sys/vm/drop_caches
            [ -b /dev/vda ] &&
                echo "L2-REPORT disk_sig_after_fault=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1 | tr -d '\0')"
        fi
    fi
fi
# Throughput of /dev/vda when asked (rig scenario bench.sh): 32 MiB sequential read and write.
if grep -q "l2.bench=1" /proc/cmdline; then
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
    now() { cut -d' ' -f1 /proc/uptime; }
    t0=$(now)
    dd if=/dev/vda of=/dev/null bs=1M count=32 2>/dev/null
    t1=$(now)
    dd if=/dev/zero of=/dev/vda bs=1M count=32 conv=fsync 2>/dev/null
    t2=$(now)
    echo "L2-REPORT bench_read_mbps=$(awk "BEGIN{d=$t1-$t0; if (d<0.01) d=0.01; printf \"%.1f\", 32/d}")"
    echo "L2-REPORT bench_write_mbps=$(awk "BEGIN{d=$t2-$t1; if (d<0.01) d=0.01; printf \"%.1f\", 32/d}")"
fi
echo "L2-REPORT done"
# reboot -f/poweroff -f do not wait for the tty to drain, and each console byte is an
# interrupt round trip through two levels of virtualization: give the output time to leave.
sleep 5
# x86: no ACPI, so power-off cannot reach the VMM; reboot=k makes reboot pulse the i8042
# reset line, which ends our VMM with status 0. aarch64: PSCI SYSTEM_OFF.
case "$(uname -m)" in
    x86_64) reboot -f ;;
    *) poweroff -f ;;
esac

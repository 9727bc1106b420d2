# Shared helpers for scenarios that run inside L1 (busybox sh); tests/rig.sh puts this file
# at /rig/l1-lib.sh and scenarios source it.

fail() {
    # L1's own view first (IOMMU faults, VFIO and KVM complaints land here), then the verdict.
    dmesg | tail -n 30 | sed 's/^/L1-DMESG: /'
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

# unbind_vfio BDF : give the function back to L1's own driver (virtio-pci).
unbind_vfio() {
    d=/sys/bus/pci/devices/$1
    echo "" >"$d/driver_override"
    if [ -e "$d/driver" ]; then
        echo "$1" >"$d/driver/unbind"
    fi
    echo "$1" >/sys/bus/pci/drivers_probe
    sleep 1
}

# disk_sig BDF : the first line of the first sector of the virtio-blk function's disk in L1;
# status 1 (and no output) when L1 has no block device for it.
disk_sig() {
    disk=/dev/$(ls /sys/bus/pci/devices/$1/virtio*/block/ 2>/dev/null | head -1)
    [ -b "$disk" ] || return 1
    dd if="$disk" bs=512 count=1 2>/dev/null | head -n 1 | tr -d '\0'
}

# msi_window : "FIRST LAST" (hex) of the first msi reserved region of any IOMMU group.
msi_window() {
    cat /sys/kernel/iommu_groups/*/reserved_regions 2>/dev/null | awk '$3 == "msi" {print $1, $2; exit}'
}

# l2_vmm : which VMM boots L2: "vmm" (ours, the default) or "qemu" (Debian's QEMU with KVM,
# bundled at /opt/qemu by resources/rig/l1-qemu.sh), from rig.l2vmm= on L1's command line
# (tests/rig.sh sets it from RIG_L2_VMM). QEMU is the differential oracle: the same L2
# kernel, initramfs and L1 settings under another VMM.
l2_vmm() {
    v=$(sed -n 's/.*rig\.l2vmm=\([a-z]*\).*/\1/p' /proc/cmdline)
    echo "${v:-vmm}"
}

# l2_watch : every 20 s while L2 runs, one line on L1's console per thread of the L2 VMM
# (state, CPU ticks, kernel wait channel, the L1 CPU it last ran on) and L1's local timer
# interrupt counts per CPU. When L2 stalls this tells an L1 that stopped (no lines), an L1
# CPU whose timer stopped (LOC frozen), a VMM thread stuck in userspace (state R/S with
# a futex wchan) and a vCPU halted in KVM apart. It also prints KVM's per-vCPU TSC offsets and,
# when L2's console has been silent for a whole period, sends our VMM SIGUSR1 so every vCPU
# logs its registers, LAPIC timer and TSC deadline.
l2_watch() {
    last_size=-1
    while sleep 20; do
        pid=$(pidof vmm qemu-system-x86_64 qemu-system-aarch64 ld-linux-x86-64.so.2 2>/dev/null | cut -d' ' -f1)
        [ -n "$pid" ] || continue
        echo "L1-WATCH uptime=$(cut -d' ' -f1 /proc/uptime) LOC=$(awk '/LOC:|arch_timer/ {printf "%s ", $0}' /proc/interrupts | tr -s ' ' | cut -c1-80)"
        for t in /proc/$pid/task/*; do
            # comm may hold spaces: take the fields after the closing parenthesis.
            st=$(sed 's/.*) //' "$t/stat" 2>/dev/null)
            set -- $st
            echo "L1-WATCH   $(cat "$t/comm" 2>/dev/null) state=$1 utime=${12} stime=${13} cpu=${37} wchan=$(cat "$t/wchan" 2>/dev/null)"
        done
        # KVM's per-vCPU TSC offsets (debugfs): equal offsets mean synchronized guest TSCs.
        for f in /sys/kernel/debug/kvm/$pid-*/vcpu*/tsc-offset; do
            [ -f "$f" ] && echo "L1-WATCH   $(basename "$(dirname "$f")") tsc-offset=$(cat "$f")"
        done
        # L2's console silent for a whole period: ask our VMM for every vCPU's state.
        size=$(wc -c </tmp/l2.log 2>/dev/null)
        if [ "$size" = "$last_size" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = vmm ]; then
            echo "L1-WATCH L2 silent for 20 s: SIGUSR1 to the VMM (vCPU state lines follow as L2| ...)"
            kill -USR1 "$pid"
        fi
        last_size=$size
    done
}

# seccomp_sample [THREAD...] : in the background while our VMM boots L2: once its vcpu0 thread
# exists (and, after it, each THREAD named), waits 2 s for the rest to start and writes one
# "comm mode" line per VMM thread (the Seccomp field of /proc/PID/task/*/status) to
# /tmp/vmm-seccomp. seccomp_verdict then judges it.
seccomp_sample() {
    rm -f /tmp/vmm-seccomp
    n=600
    while [ "$n" -gt 0 ]; do
        pid=$(pidof vmm 2>/dev/null | cut -d' ' -f1)
        [ -f /tmp/l2.status ] && return 0 # the VMM ended before its vCPUs ran
        if [ -n "$pid" ] && grep -qx vcpu0 /proc/"$pid"/task/*/comm 2>/dev/null; then
            ok=1
            for t in "$@"; do
                grep -qx "$t" /proc/"$pid"/task/*/comm 2>/dev/null || ok=0
            done
            [ "$ok" = 1 ] && break
        fi
        n=$((n - 1))
        sleep 0.2
    done
    [ -n "$pid" ] || return 0
    sleep 2
    for t in /proc/"$pid"/task/*; do
        echo "$(cat "$t/comm" 2>/dev/null) $(sed -n 's/^Seccomp:[[:space:]]*//p' "$t/status" 2>/dev/null)"
    done >/tmp/vmm-seccomp.part
    mv /tmp/vmm-seccomp.part /tmp/vmm-seccomp
}

# seccomp_verdict : every thread of our VMM ran under a filter (Seccomp 2, --seccomp on is
# the default), or the scenario fails.
seccomp_verdict() {
    [ "$(l2_vmm)" = vmm ] || return 0
    [ -s /tmp/vmm-seccomp ] || fail "the VMM's threads were never sampled for seccomp"
    echo "seccomp: $(awk '{printf "%s=%s ", $1, $2}' /tmp/vmm-seccomp)"
    awk '$2 != 2 {bad = 1} END {exit bad}' /tmp/vmm-seccomp ||
        fail "a VMM thread ran without its seccomp filter: $(awk '$2 != 2 {printf "%s=%s ", $1, $2}' /tmp/vmm-seccomp)"
}

# run_l2 CMDLINE VCPUS MEM_MB [BDF[=ID]...] : boots /rig/l2-kernel with /rig/l2-initramfs.cpio.gz
# under l2_vmm, passing the PCI functions BDF (bound to vfio-pci) through. The console
# streams to L1's console prefixed "L2| " and is kept in /tmp/l2.log (our VMM's own log in
# /tmp/l2.vmm.log, appended to /tmp/l2.log at the end); the VMM's exit status goes to
# /tmp/l2.status.
run_l2() {
    cmdline=$1 vcpus=$2 mem=$3
    shift 3
    l2_watch &
    watch_pid=$!
    case "$(l2_vmm)" in
        vmm)
            set -- $(for d in "$@"; do
                bdf=${d%%=*}
                id=${d#*=}
                if [ "$id" != "$d" ]; then echo "--device path=/sys/bus/pci/devices/$bdf,id=$id"
                else echo "--device path=/sys/bus/pci/devices/$bdf"; fi
            done)
            rm -f /tmp/l2.status
            seccomp_sample &
            sample_pid=$!
            # The VMM's log goes to its own file: written into the console's pipe, a line from
            # another VMM thread can land inside one of L2's report lines (a CI run lost an
            # "L2-REPORT iommu_group=" line to the vSMMU event thread's counters that way). It
            # is streamed too, and appended to /tmp/l2.log once the VMM is gone.
            : >/tmp/l2.vmm.log
            tail -f /tmp/l2.vmm.log 2>/dev/null | sed 's/^/L2| /' &
            ( /rig/vmm --kernel /rig/l2-kernel --initrd /rig/l2-initramfs.cpio.gz \
                --cmdline "$cmdline" --vcpus "$vcpus" --memory "${mem}M" --log-level info "$@" \
                2>>/tmp/l2.vmm.log
              echo $? > /tmp/l2.status ) | tee /tmp/l2.log | sed 's/^/L2| /'
            wait $sample_pid
            sleep 1
            kill $(pidof tail) 2>/dev/null
            cat /tmp/l2.vmm.log >>/tmp/l2.log
            ;;
        qemu)
            [ -x /opt/qemu/bin/qemu ] || fail "rig.l2vmm=qemu but no /opt/qemu/bin/qemu in L1"
            set -- $(for d in "$@"; do
                echo "-device vfio-pci,host=${d%%=*},iommufd=ifd0"
            done)
            [ $# -gt 0 ] && set -- -object iommufd,id=ifd0 "$@"
            case "$(uname -m)" in
                x86_64) machine="-machine q35,accel=kvm -cpu host" ;;
                aarch64) machine="-machine virt,gic-version=3,accel=kvm -cpu host"
                    # QEMU's virt has a PL011, ours a 16550: the same scenario line names ttyS0.
                    cmdline=$(echo "$cmdline" | sed 's/console=ttyS0/console=ttyAMA0/g') ;;
            esac
            # shellcheck disable=SC2086
            ( /opt/qemu/bin/qemu $machine -smp "$vcpus" -m "${mem}M" -nodefaults -no-user-config \
                -display none -monitor none -serial stdio -no-reboot \
                -kernel /rig/l2-kernel -initrd /rig/l2-initramfs.cpio.gz -append "$cmdline" "$@" 2>&1
              echo $? > /tmp/l2.status ) | tee /tmp/l2.log | sed 's/^/L2| /'
            ;;
        *) kill $watch_pid; fail "unknown rig.l2vmm=$(l2_vmm)" ;;
    esac
    kill $watch_pid 2>/dev/null
    wait $watch_pid 2>/dev/null
}

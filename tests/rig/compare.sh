#!/bin/sh
# Runs as /scenario.sh inside L1 (busybox sh): our VMM (/rig/vmm) side by side with QEMU
# (/opt/qemu/bin/qemu, KVM, bundled by resources/rig/l1-qemu.sh), issue 13's cases that need
# no API. Both boot the same L2 kernel and initramfs (/rig/l2-kernel, /rig/l2-initramfs.cpio.gz,
# whose /scenario.sh is tests/rig/l2-guest.sh) with 2 vCPUs (1 on x86_64, below) and 512M, K times each, alternating
# (odd rounds ours first, even rounds QEMU first). K: rig.compare_runs= on L1's command line
# (default 5). Two boots per VMM and round:
#   plain  no devices                          -> case 1, case 4 (no devices)
#   pt     QEMU's virtio-blk passed through,   -> cases 2, 3, 4 (passthrough), 5
#          L2 runs its 32 MiB dd (l2.bench=1)
# Cases:
#   1/2  VMM start to L2 init running: L1 takes /proc/uptime just before spawning the VMM and
#        stamps the moment the line "RIG-INIT: up" of L2's /init arrives on the VMM's stdout.
#   3    passthrough set-up. Like for like: VMM start to the first line of L2's console
#        (earlyprintk/earlycon), both VMMs, L1 stamps. Ours also from its info log: the
#        process age when the vCPUs start (10 ms resolution), device attach and guest-RAM DMA
#        map times. QEMU logs no such times: its first console line is the proxy of its first
#        guest instruction.
#   4    VMM resident memory excluding guest RAM, read from /proc/PID/smaps the moment L2's
#        init is up: the sum of Rss minus the Rss of the guest RAM mapping (the mapping whose
#        size is 512M, up to 4M more for alignment; else the largest mapping of 256M or more).
#   5    L2 sequential read and write MB/s of the passed-through virtio-blk (l2-guest.sh).
#   6    hotplug (third boot per VMM and round, "hp"): L2 boots with no device, then the
#        virtio-blk is added (ours: vmm-remote add-device over the API socket; QEMU:
#        device_add vfio-pci over QMP into a pcie-root-port, native PCIe hotplug on both),
#        removed and added again. L1 stamps the call and the moment L2's console says the
#        disk is usable ("L2-HP blk sig=": its driver bound and the first sector read) or
#        gone; the figures are call -> usable for the first add and the re-add, call -> gone
#        for the remove.
# Table: medians, ratio ours/QEMU, the issue's target. RIG-RESULT: PASS only when every run of
# both VMMs succeeded; a run of one VMM failing where the same case of the other passed gives a
# line "compare: DIFFERENTIAL ...".
# Other knobs on L1's command line: rig.compare_timeout= seconds per L2 run (default 240);
# rig.compare_kinds= the boots per round, comma-separated (default plain,pt,hp), for a quicker
# look at one case; rig.compare_ours_args= extra arguments for our VMM, comma-separated (e.g.
# --memory-backing,anon), to attribute a gap to one choice of ours.
. /rig/l1-lib.sh
ARCH=$(uname -m)
# L2 vCPUs: 2, but 1 on x86_64 (rig.compare_vcpus= overrides). With 2, a long x86 run loses
# L1 to QEMU-TCG never delivering L1's timer while an L2 vCPU busy-waits for its sibling, with
# either VMM as L2's (docs/rig-reliability.md, failure mode 4).
case "$ARCH" in
    x86_64) VCPUS=1 ;;
    *) VCPUS=2 ;;
esac
V=$(sed -n 's/.*rig\.compare_vcpus=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$V" ] && VCPUS=$V
MEM_MB=512
RAM_KB=$((MEM_MB * 1024))
K=$(sed -n 's/.*rig\.compare_runs=\([0-9]*\).*/\1/p' /proc/cmdline)
K=${K:-5}
[ "$K" -ge 1 ] 2>/dev/null || K=5
TMO=$(sed -n 's/.*rig\.compare_timeout=\([0-9]*\).*/\1/p' /proc/cmdline)
TMO=${TMO:-240}
KINDS=$(sed -n 's/.*rig\.compare_kinds=\([a-z,]*\).*/\1/p' /proc/cmdline | tr ',' ' ')
KINDS=${KINDS:-plain pt hp}
for k in $KINDS; do
    case "$k" in plain | pt | hp) ;; *) fail "rig.compare_kinds: unknown boot '$k' (plain, pt, hp)" ;; esac
done
OURS_ARGS=$(sed -n 's/.*rig\.compare_ours_args=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')
# rig.compare_qemu_trace=1: QEMU logs each IOMMU_IOAS_MAP with its completion time (the
# lines go to the run's log), to see where its passthrough set-up spends time.
QTRACE=$(sed -n 's/.*rig\.compare_qemu_trace=\([01]\).*/\1/p' /proc/cmdline)
# rig.compare_settle=N: seconds between two runs (default 1), for the previous VMM's teardown
# (unpinning, IOMMU unmaps) to finish before the next one starts.
SETTLE=$(sed -n 's/.*rig\.compare_settle=\([0-9]*\).*/\1/p' /proc/cmdline)
SETTLE=${SETTLE:-1}
W=/tmp/compare
DATA=$W/data
rm -rf "$W"
mkdir -p "$W"
: >"$DATA"
: >"$W/differentials"

[ -c /dev/kvm ] || fail "no /dev/kvm in L1"
[ -x /rig/vmm ] || fail "no /rig/vmm in L1"
[ -x /opt/qemu/bin/qemu ] || fail "no /opt/qemu/bin/qemu in L1 (resources/rig/l1-qemu.sh ARCH, put at /opt/qemu)"
[ -f /rig/l2-kernel ] && [ -f /rig/l2-initramfs.cpio.gz ] || fail "no L2 kernel or initramfs in /rig"

BLK=$(find_pci 1af4 1042 | head -n1)
[ -n "$BLK" ] || fail "virtio-blk (1af4:1042) not found"
bind_vfio "$BLK"

# L2 command lines. Our aarch64 machine has a 16550 (ttyS0), QEMU's virt a PL011 (ttyAMA0).
case "$ARCH" in
    x86_64)
        BASE="console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 no_timer_check i8042.noaux i8042.nomux i8042.dumbkbd"
        CON_OURS=$BASE CON_QEMU=$BASE
        QMACHINE="q35,accel=kvm" ;;
    aarch64)
        CON_OURS="console=ttyS0 earlycon panic=-1"
        CON_QEMU="console=ttyAMA0 earlycon panic=-1"
        QMACHINE="virt,gic-version=3,accel=kvm" ;;
    *) fail "unknown arch $ARCH" ;;
esac

uptime_s() { read -r u _ </proc/uptime; echo "$u"; }

# record VMM KEY VALUE : one figure of one run.
record() {
    [ -n "$3" ] && echo "$1 $2 $3" >>"$DATA"
}

# stamp_console BASE : copy stdin (the VMM's stdout, L2's console) to BASE.out; at the first
# line and at L2 init's "RIG-INIT: up" append "first=UPTIME" / "init=UPTIME" to BASE.t, and at
# the latter snapshot the VMM's memory (BASE.pid) into BASE.smaps. read and the uptime read are
# shell builtins: no fork per console line.
stamp_console() {
    first=
    init=
    while IFS= read -r line || [ -n "$line" ]; do
        if [ -z "$first" ]; then
            read -r first _ </proc/uptime
            echo "first=$first" >>"$1.t"
        fi
        case "$line" in
            "L2-HP ready"* | "L2-HP blk sig="* | "L2-HP blk gone"* | "L2-HP blk back"*)
                read -r t _ </proc/uptime
                # Console lines end in CR: "L2-HP blk gone" would keep it in its key.
                echo "${line%% sig=*}=$t" | tr -d '\r' | sed 's/^L2-HP //; s/ /_/g' >>"$1.t" ;;
        esac
        if [ -z "$init" ]; then
            case "$line" in
                *"RIG-INIT: up"*)
                    read -r init _ </proc/uptime
                    echo "init=$init" >>"$1.t"
                    pid=$(cat "$1.pid" 2>/dev/null)
                    [ -n "$pid" ] && cat "/proc/$pid/smaps" >"$1.smaps" 2>/dev/null
                    ;;
            esac
        fi
        printf '%s\n' "$line"
    done >"$1.out"
}

# mem_kb SMAPS : "RSS_KB RAM_RSS_KB RAM_SIZE_KB": all Rss, and the Rss and size of the guest RAM
# mapping (size RAM_KB .. RAM_KB+4096 kB; failing that the largest mapping >= RAM_KB/2).
mem_kb() {
    awk -v ram="$RAM_KB" '
        /^[0-9a-f]+-[0-9a-f]+ / { n++; next }
        /^Size:/ { size[n] = $2; next }
        /^Rss:/ { rss[n] = $2; total += $2; next }
        END {
            for (i = 1; i <= n; i++) if (size[i] >= ram && size[i] <= ram + 4096) { r += rss[i]; s += size[i] }
            if (s == 0) {
                best = 0
                for (i = 1; i <= n; i++) if (size[i] >= ram / 2 && size[i] > size[best]) best = i
                if (best) { r = rss[best]; s = size[best] }
            }
            print total + 0, r + 0, s + 0
        }' "$1"
}

# tail_l2 BASE : the end of a failed run's console and VMM log, with panic/oops markers
# reworded so run.sh does not take them for L1's.
tail_l2() {
    for f in "$1.out" "$1.err"; do
        [ -s "$f" ] || continue
        echo "compare: --- last lines of $f"
        tail -n 25 "$f" | tr -d '\r' | sed 's/Kernel panic/L2 kernel-panic/; s/Internal error: Oops/Internal error (L2): oops/; s/^/L2| /'
    done
}

# hotplug_driver VMM BASE : in the background of an hp run: once L2 says "L2-HP ready", adds
# the virtio-blk, removes it once L2 has used it, adds it again once L2 has let it go; stamps
# each call (BASE.t: call_add=, call_remove=, call_readd=). A failed step goes to BASE.hpfail.
hotplug_driver() {
    vmm=$1 b=$2
    wait_for() { # PATTERN SECONDS
        n=$(($2 * 10))
        while ! grep -q "$1" "$b.out" 2>/dev/null; do
            n=$((n - 1))
            [ "$n" -gt 0 ] || { echo "no '$1' from L2 within $2 s" >"$b.hpfail"; return 1; }
            sleep 0.1
        done
    }
    stamp() { read -r u _ </proc/uptime; echo "call_$1=$u" >>"$b.t"; }
    if [ "$vmm" = qemu ]; then
        exec 7<>"$b.qmp.in" 8<>"$b.qmp.out"
        qmp() { # JSON : one command; waits for its "return" (or "error") line
            printf '%s\n' "$1" >&7
            while IFS= read -r -t 30 -u 8 reply; do
                case "$reply" in *'"return"'*) return 0 ;; *'"error"'*) echo "QMP: $reply" >"$b.hpfail"; return 1 ;; esac
            done
            echo "QMP: no answer to $1" >"$b.hpfail"
            return 1
        }
        IFS= read -r -t 30 -u 8 _greeting
        qmp '{"execute":"qmp_capabilities"}' || return 1
        add() { qmp "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"vfio-pci\",\"host\":\"$BLK\",\"iommufd\":\"ifd0\",\"bus\":\"rp1\",\"id\":\"hp1\"}}"; }
        del() { # device_del, then its DEVICE_DELETED event (QEMU finishes the unplug later)
            qmp '{"execute":"device_del","arguments":{"id":"hp1"}}' || return 1
            while IFS= read -r -t 60 -u 8 reply; do
                case "$reply" in *DEVICE_DELETED*hp1*) return 0 ;; esac
            done
            echo "QMP: no DEVICE_DELETED for hp1" >"$b.hpfail"
            return 1
        }
    else
        R="/rig/vmm-remote --api-socket $b.sock"
        add() { out=$($R add-device "path=/sys/bus/pci/devices/$BLK,id=hp1" 2>&1) || { echo "add-device: $out" >"$b.hpfail"; return 1; }; }
        del() { out=$($R remove-device hp1 2>&1) || { echo "remove-device: $out" >"$b.hpfail"; return 1; }; }
    fi
    wait_for "^L2-HP ready" 180 || return 1
    stamp add; add || return 1
    wait_for "^L2-HP blk sig=" 60 || return 1
    stamp remove; del || return 1
    wait_for "^L2-HP blk gone" 60 || return 1
    stamp readd; add || return 1
    wait_for "^L2-HP blk back" 60 || return 1
}

# run_one VMM CASE ROUND : VMM ours|qemu, CASE plain|pt. Records the figures; returns 1 (and
# writes the reason to $W/VMM-CASE-ROUND.why) when the run failed.
run_one() {
    vmm=$1 kind=$2 round=$3
    b=$W/$vmm-$kind-$round
    rm -f "$b".*
    extra=""
    [ "$kind" = pt ] && extra="l2.bench=1"
    [ "$kind" = hp ] && extra="l2.hp_sig=compare-$round l2.hp_cycles=0"
    if [ "$vmm" = ours ]; then
        set -- /rig/vmm --kernel /rig/l2-kernel --initrd /rig/l2-initramfs.cpio.gz \
            --cmdline "$CON_OURS $extra" --vcpus "$VCPUS" --memory "${MEM_MB}M" --log-level info
        # shellcheck disable=SC2086 # OURS_ARGS: one word per argument, by design
        [ -n "$OURS_ARGS" ] && set -- "$@" $OURS_ARGS
        [ "$kind" = pt ] && set -- "$@" --device "path=/sys/bus/pci/devices/$BLK"
        [ "$kind" = hp ] && set -- "$@" --api-socket "$b.sock"
    else
        set -- /opt/qemu/bin/qemu -machine "$QMACHINE" -cpu host -smp "$VCPUS" -m "${MEM_MB}M" \
            -nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot \
            -kernel /rig/l2-kernel -initrd /rig/l2-initramfs.cpio.gz -append "$CON_QEMU $extra"
        [ "$kind" = pt ] && set -- "$@" -object iommufd,id=ifd0 -device "vfio-pci,host=$BLK,iommufd=ifd0"
        [ "$kind" != plain ] && [ "$QTRACE" = 1 ] && set -- "$@" -msg timestamp=on -trace 'iommufd_*' -trace 'vfio_listener_region_add_ram'

        if [ "$kind" = hp ]; then
            mkfifo "$b.qmp.in" "$b.qmp.out"
            set -- "$@" -object iommufd,id=ifd0 -device pcie-root-port,id=rp1,chassis=1 \
                -chardev "pipe,id=qmp,path=$b.qmp" -mon chardev=qmp,mode=control
            # q35 would hot-plug through ACPI; native PCIe hotplug (pciehp) is like for like.
            [ "$ARCH" = x86_64 ] && set -- "$@" -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off
        fi
    fi
    hp_driver=
    if [ "$kind" = hp ]; then
        hotplug_driver "$vmm" "$b" &
        hp_driver=$!
    fi
    # Watchdog: a hung L2 costs one run, not the scenario.
    ( sleep "$TMO"
      p=$(cat "$b.pid" 2>/dev/null)
      [ -n "$p" ] && kill "$p" 2>/dev/null && echo "timeout after ${TMO}s" >"$b.timeout" &&
          sleep 10 && kill -9 "$p" 2>/dev/null ) &
    wd=$!
    t0=$(uptime_s)
    [ "$QTRACE" = 1 ] && t0w=$(date +%s.%N)
    # sh -c writes its PID and execs the VMM (the QEMU wrapper execs ld.so in turn), so
    # BASE.pid is the VMM's PID. Its stdin stays L1's console, as in run_l2.
    ( sh -c 'echo $$ >"$0"; exec "$@"' "$b.pid" "$@" 2>"$b.err"
      echo $? >"$b.status" ) | stamp_console "$b"
    kill "$wd" 2>/dev/null
    wait "$wd" 2>/dev/null
    if [ -n "$hp_driver" ]; then
        kill "$hp_driver" 2>/dev/null
        wait "$hp_driver" 2>/dev/null
    fi
    st=$(cat "$b.status" 2>/dev/null)
    first=$(sed -n 's/^first=//p' "$b.t" 2>/dev/null)
    init=$(sed -n 's/^init=//p' "$b.t" 2>/dev/null)
    get() { sed -n "s/^L2-REPORT $1=//p" "$b.out" | tr -d '\r' | head -n1; }
    why=""
    if [ -f "$b.timeout" ]; then why=$(cat "$b.timeout")
    elif [ "$st" != 0 ]; then why="exit status ${st:-none}: $(grep -E 'error|panic' "$b.err" | tail -n1)"
    elif grep -q "Kernel panic" "$b.out"; then why="L2 kernel panic"
    elif [ -z "$init" ]; then why="no 'RIG-INIT: up' from L2"
    elif ! grep -q "^L2-REPORT done" "$b.out"; then why="L2 init never reported"
    elif [ "$(get nproc)" != "$VCPUS" ]; then why="L2 nproc '$(get nproc)' != $VCPUS"
    elif [ "$kind" = pt ] && [ -z "$(get bench_read_mbps)" ]; then why="no throughput figures from L2"
    elif [ "$kind" = hp ] && [ -f "$b.hpfail" ]; then why="hotplug: $(cat "$b.hpfail")"
    fi
    rd=$(get bench_read_mbps)
    wr=$(get bench_write_mbps)
    mem=""
    [ -s "$b.smaps" ] && mem=$(mem_kb "$b.smaps")
    if [ -n "$why" ]; then
        echo "$why" >"$b.why"
        echo "compare: round $round $vmm $kind: FAILED: $why"
        tail_l2 "$b"
        return 1
    fi
    boot=$(awk "BEGIN { printf \"%.3f\", $init - $t0 }")
    fl=$(awk "BEGIN { printf \"%.1f\", ($first - $t0) * 1000 }")
    record "$vmm" "boot_$kind" "$boot"
    record "$vmm" "first_ms_$kind" "$fl"
    set -- $mem
    rss_kb=${1:-} ram_rss_kb=${2:-} ram_size_kb=${3:-}
    if [ -n "$rss_kb" ] && [ "${ram_size_kb:-0}" -gt 0 ]; then
        record "$vmm" "mem_mib_$kind" "$(awk "BEGIN { printf \"%.1f\", ($rss_kb - $ram_rss_kb) / 1024 }")"
    fi
    if [ "$kind" != plain ] && [ "$vmm" = qemu ] && [ "$QTRACE" = 1 ]; then
        echo "compare: QEMU's IOAS maps (completion times; QEMU spawned at $t0w):"
        grep -E 'iommufd_|vfio_listener' "$b.err" | grep -v 'size=0x[0-9a-f]\{1,5\} ' | head -n 12 | sed 's/^/compare:   /'
    fi
    if [ "$kind" = hp ]; then
        # Call -> L2 sees it, from the driver's "call_*" and the console's stamps.
        t() { sed -n "s/^$1=//p" "$b.t" | head -n1; }
        ms() { [ -n "$1" ] && [ -n "$2" ] && awk "BEGIN { printf \"%.0f\", ($2 - $1) * 1000 }"; }
        add=$(ms "$(t call_add)" "$(t blk)")
        rm_=$(ms "$(t call_remove)" "$(t blk_gone)")
        readd=$(ms "$(t call_readd)" "$(t blk_back)")
        record "$vmm" hp_add_ms "$add"
        record "$vmm" hp_remove_ms "$rm_"
        record "$vmm" hp_readd_ms "$readd"
        echo "compare: round $round $vmm hp: ok, add ${add:-?}ms, remove ${rm_:-?}ms, re-add ${readd:-?}ms (call -> L2 sees it)"
        return 0
    fi
    line="compare: round $round $vmm $kind: ok, init up ${boot}s, first console line ${fl}ms"
    [ -n "$rss_kb" ] && line="$line, Rss ${rss_kb}kB (guest RAM mapping ${ram_size_kb}kB, ${ram_rss_kb}kB resident)"
    if [ "$kind" = pt ]; then
        record "$vmm" read_mbps "$rd"
        record "$vmm" write_mbps "$wr"
        line="$line, read ${rd} MB/s, write ${wr} MB/s"
        if [ "$vmm" = ours ]; then
            vs=$(sed -n 's/.*vCPUs start \([0-9.]*\) ms after the VMM started.*/\1/p' "$b.err" | head -n1)
            at=$(sed -n 's/.*passthrough: .* attached in \([0-9.]*\) ms;.*/\1/p' "$b.err" | head -n1)
            dm=$(sed -n 's/.*guest RAM mapped for DMA in \([0-9.]*\) ms.*/\1/p' "$b.err" | head -n1)
            record ours vcpus_ms "$vs"
            record ours attach_ms "$at"
            pp=$(sed -n 's/.*page tables of .* populated in \([0-9.]*\) ms.*/\1/p' "$b.err" | head -n1)
            record ours dma_ms "$dm"
            record ours populate_ms "$pp"
            line="$line; VMM log: vCPUs start ${vs:-?}ms, attach ${at:-?}ms, DMA map ${dm:-?}ms"
            [ -n "$pp" ] && line="$line, page tables populated ${pp}ms"
        fi
    fi
    echo "$line"
    return 0
}

# QEMU-TCG (L0) backs L1's RAM on L1's first touch, at a cost far above L1's own work; the
# VMM that first gets never-touched L1 pages pays it (a 512 MiB DMA map took 0.8 s on warm
# pages and 2.7 s on cold ones in one x86 run, and each round's first VMM was the slow one).
# So L1's free memory is touched once before the rounds: both VMMs then pin pages L0 has
# already backed, as on a real host.
warm_l1_memory() {
    avail_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
    mb=$((avail_kb / 1024 - 256))
    [ "$mb" -gt 0 ] || return 0
    t=$(uptime_s)
    mkdir -p /tmp/warm
    mount -t tmpfs -o "size=${mb}m" tmpfs /tmp/warm || fail "cannot mount a tmpfs to warm L1's memory"
    dd if=/dev/zero of=/tmp/warm/fill bs=1M count="$mb" 2>/dev/null
    umount /tmp/warm
    echo "compare: touched ${mb} MiB of L1's free memory in $(awk "BEGIN { printf \"%.1f\", $(uptime_s) - $t }")s, so both VMMs pin memory L0 has backed"
}
warm_l1_memory

echo "compare: $ARCH, $K round(s), L2 ${VCPUS} vCPUs ${MEM_MB}M, virtio-blk $BLK passed through in the pt runs, ${TMO}s per run"
echo "compare: $(/opt/qemu/bin/qemu --version 2>&1 | head -n1)"
echo "compare: boots per round: $KINDS${OURS_ARGS:+; ours with extra arguments: $OURS_ARGS}"
ok_runs=0
failed_runs=0
round=1
while [ "$round" -le "$K" ]; do
    if [ $((round % 2)) = 1 ]; then order="ours qemu"; else order="qemu ours"; fi
    for kind in $KINDS; do
        res_ours="" res_qemu=""
        for vmm in $order; do
            if run_one "$vmm" "$kind" "$round"; then r=ok; ok_runs=$((ok_runs + 1))
            else r=failed; failed_runs=$((failed_runs + 1)); fi
            if [ "$vmm" = ours ]; then res_ours=$r; else res_qemu=$r; fi
            sleep "$SETTLE"
        done
        if [ "$res_ours" != "$res_qemu" ]; then
            if [ "$res_ours" = failed ]; then
                echo "compare: DIFFERENTIAL round $round case $kind: ours failed ($(cat "$W/ours-$kind-$round.why")), QEMU passed"
            else
                echo "compare: DIFFERENTIAL round $round case $kind: QEMU failed ($(cat "$W/qemu-$kind-$round.why")), ours passed"
            fi
            echo "differential $round $kind ours=$res_ours qemu=$res_qemu" >>"$W/differentials"
        fi
    done
    round=$((round + 1))
done

# median VMM KEY : the median of a figure over the runs that produced it, or "-".
median() {
    awk -v v="$1" -v k="$2" '$1 == v && $2 == k { print $3 }' "$DATA" | sort -n | awk '
        { a[NR] = $1 }
        END {
            if (NR == 0) { print "-"; exit }
            if (NR % 2) m = a[(NR + 1) / 2]; else m = (a[NR / 2] + a[NR / 2 + 1]) / 2
            if (m >= 1000) printf "%.0f\n", m; else if (m >= 10) printf "%.1f\n", m; else printf "%.3f\n", m
        }'
}
count() { awk -v v="$1" -v k="$2" '$1 == v && $2 == k { n++ } END { print n + 0 }' "$DATA"; }

# row LABEL KEY_OURS KEY_QEMU TARGET
row() {
    o=$(median ours "$2")
    q=$(median qemu "$3")
    ratio=-
    if [ "$o" != - ] && [ "$q" != - ]; then
        ratio=$(awk "BEGIN { if ($q > 0) printf \"%.2f\", $o / $q; else print \"-\" }")
    fi
    printf '%-58s %9s %9s %7s  %s\n' "$1" "$o" "$q" "$ratio" "$4"
}

echo "compare: medians over $K round(s) ($ARCH; runs per figure: ours $(count ours boot_plain)+$(count ours boot_pt), QEMU $(count qemu boot_plain)+$(count qemu boot_pt))"
printf '%-58s %9s %9s %7s  %s\n' "case" "ours" "QEMU" "ours/Q" "target"
row "1 start -> L2 init up, no devices (s)" boot_plain boot_plain "<= 0.6"
row "2 start -> L2 init up, virtio-blk passed through (s)" boot_pt boot_pt ""
row "3 start -> first L2 console line, passthrough (ms) [a]" first_ms_pt first_ms_pt "<= 0.8"
row "3 start -> first guest instr. (ms) [b]" vcpus_ms first_ms_pt "<= 0.8"
row "3   ours: devices attached in (ms)" attach_ms none ""
row "3   ours: 512 MiB guest RAM mapped for DMA in (ms)" dma_ms none ""
row "3   ours: its page tables populated in (ms, memfd only)" populate_ms none ""
row "4 resident memory excl. guest RAM, no devices (MiB)" mem_mib_plain mem_mib_plain "<= 0.15"
row "4 resident memory excl. guest RAM, passthrough (MiB)" mem_mib_pt mem_mib_pt "<= 0.15"
row "5 L2 sequential read, passed-through virtio-blk (MB/s)" read_mbps read_mbps ">= 0.95"
row "5 L2 sequential write, passed-through virtio-blk (MB/s)" write_mbps write_mbps ">= 0.95"
row "6 hotplug: add call -> disk usable in L2 (ms)" hp_add_ms hp_add_ms ""
row "6 hotplug: remove call -> disk gone in L2 (ms)" hp_remove_ms hp_remove_ms ""
row "6 hotplug: re-add call -> disk usable in L2 (ms)" hp_readd_ms hp_readd_ms ""
echo "compare: [a] both from L1: /proc/uptime before the spawn to the first line on the VMM's stdout (earlyprintk/earlycon), a proxy for the first guest instruction"
echo "compare: [b] ours: the VMM's info log 'vCPUs start N ms after the VMM started' (10 ms resolution, after the DMA map); QEMU: no such log, its first L2 console line [a] is the proxy"
echo "compare: QEMU starts through /opt/qemu/bin/qemu (sh wrapper + ld.so + ~50 shared libraries), counted in its times; ours is one static binary"

if [ "$failed_runs" -gt 0 ]; then
    fail "compare: $failed_runs of $((ok_runs + failed_runs)) runs failed ($(wc -l <"$W/differentials") differential)"
fi
echo "RIG-RESULT: PASS compare: $ok_runs runs"

#!/usr/bin/env bash
# l1-qemu.sh ARCH
#
# A QEMU that runs inside L1 (KVM on L1's /dev/kvm), beside our VMM: the differential oracle
# for guest-visible bugs and the peer of the side-by-side figures. Prints a directory meant
# for the L1 initramfs at /opt/qemu:
#   /opt/qemu/bin/qemu        wrapper: runs qemu-system-ARCH through the bundled ld.so
#   /opt/qemu/bin/qemu-system-ARCH, /opt/qemu/lib/*.so*, /opt/qemu/share/qemu/ (firmware)
#
#   x86_64: the host's own qemu-system-x86 (bookworm-backports, installed by lib.sh's
#           rig_need_qemu), its shared libraries found with ldd, and the firmware that q35
#           with a direct kernel boot loads.
#   aarch64: Debian's arm64 qemu-system-arm from bookworm-backports (the suite of the host's
#           x86 QEMU), downloaded with its dependency closure through a private arm64-only apt
#           configuration (bookworm, -updates, -security, -backports; its lists, cache and empty
#           dpkg status under $RIG_CACHE/apt/l1-qemu-arm64), extracted with dpkg-deb -x into a
#           staging root (never installed). qemu-system-aarch64 and the libraries its ELF
#           NEEDED entries reach (read with readelf, recursively, inside the staging root) plus
#           ld-linux-aarch64.so.1 are copied and stripped. No firmware: virt with -kernel boots
#           without a BIOS, and -nodefaults creates no NIC that would load an option ROM.
#           Check on the x86 host (qemu-user-static):
#             qemu-aarch64-static ROOT/lib/ld-linux-aarch64.so.1 --library-path ROOT/lib \
#                 ROOT/bin/qemu-system-aarch64 --version
#
# Cache: $RIG_CACHE/l1-qemu/ARCH-HASH/, HASH over the qemu package version and this script.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ARCH=${1:-}
[ -n "$ARCH" ] || rig_die "usage: $0 aarch64|x86_64"
rig_arch_check "$ARCH"

# ---------------------------------------------------------------- aarch64
QA_APT=l1-qemu-arm64

# qa_apt apt-get-args... : apt-get with the private arm64 configuration (see the header).
qa_apt() {
    local -a opts
    mapfile -t opts < <(rig_apt_opts "$QA_APT")
    local d
    d=$(rig_apt_dir "$QA_APT")
    DEBIAN_FRONTEND=noninteractive apt-get -q "${opts[@]}" \
        -o "Dir::State::status=$d/status" \
        -o "APT::Architecture=arm64" -o "APT::Architectures=arm64" "$@"
}

# qa_apt_setup : write the private sources (mirror read from the machine's apt sources, as
# lib.sh's configurations do) and refresh the lists when older than $RIG_APT_MAX_AGE.
qa_apt_setup() {
    local d main sec key src now stamp=0
    d=$(rig_apt_dir "$QA_APT")
    mkdir -p "$d/lists/partial" "$d/cache"
    main=$(rig_mirror_uri)
    sec=$(rig_security_uri)
    key=$(rig_keyring)
    src="deb [arch=arm64 signed-by=$key] $main bookworm main
deb [arch=arm64 signed-by=$key] $main bookworm-updates main
deb [arch=arm64 signed-by=$key] $main bookworm-backports main
deb [arch=arm64 signed-by=$key] $sec bookworm-security main"
    [ -f "$d/status" ] || : >"$d/status"
    if [ ! -f "$d/sources.list" ] || [ "$(cat "$d/sources.list")" != "$src" ]; then
        printf '%s\n' "$src" >"$d/sources.list"
        rm -f "$d/updated"
    fi
    now=$(date +%s)
    [ -f "$d/updated" ] && stamp=$(stat -c %Y "$d/updated")
    if [ $((now - stamp)) -ge "$RIG_APT_MAX_AGE" ]; then
        rig_log "apt ($QA_APT): updating private package lists from $main"
        qa_apt update >"$d/update.log" 2>&1 ||
            { tail -n 20 "$d/update.log" >&2; rig_die "apt-get update ($QA_APT) failed"; }
        touch "$d/updated"
    fi
}

# qa_resolve STAGE PATH : follow symlinks inside the staging root (absolute targets are
# taken relative to STAGE) and print the regular file PATH leads to.
qa_resolve() {
    local stage=$1 p=$2 t n=0
    while [ -L "$p" ]; do
        t=$(readlink "$p")
        case "$t" in
            /*) p=$stage$t ;;
            *) p=$(dirname "$p")/$t ;;
        esac
        n=$((n + 1))
        [ "$n" -lt 40 ] || return 1
    done
    [ -f "$p" ] && echo "$p"
}

# qa_find_lib STAGE SONAME : the library file of SONAME in the staging root (multiarch and
# plain library directories first, then anywhere).
qa_find_lib() {
    local stage=$1 so=$2 dir f
    for dir in lib/aarch64-linux-gnu usr/lib/aarch64-linux-gnu lib usr/lib; do
        if [ -e "$stage/$dir/$so" ] || [ -L "$stage/$dir/$so" ]; then
            qa_resolve "$stage" "$stage/$dir/$so" && return 0
        fi
    done
    f=$(find "$stage" -name "$so" \( -type f -o -type l \) 2>/dev/null | head -n1)
    [ -n "$f" ] && qa_resolve "$stage" "$f"
}

qa_readelf() {
    if command -v aarch64-linux-gnu-readelf >/dev/null 2>&1; then
        aarch64-linux-gnu-readelf "$@"
    else
        readelf "$@"
    fi
}

# qa_needed ELF : its DT_NEEDED sonames.
qa_needed() {
    qa_readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'
}

bundle_aarch64() {
    qa_apt_setup
    local ver
    ver=$(qa_apt_cache_version)
    case "$ver" in
        *bpo12*) ;;
        *) rig_die "l1-qemu aarch64: qemu-system-arm:arm64 in bookworm-backports is '$ver'" ;;
    esac
    local major=${ver#*:}
    major=${major%%.*}
    [ "$major" -ge 10 ] 2>/dev/null || rig_die "l1-qemu aarch64: qemu-system-arm $ver is older than 10"
    local hash out
    hash=$(rig_hash "$ARCH" "qemu-system-arm:arm64=$ver" "${BASH_SOURCE[0]}")
    out="$RIG_CACHE/l1-qemu/$ARCH-$hash"
    if [ -f "$out/.done" ]; then
        echo "$out/root"
        return 0
    fi
    rig_lock "l1-qemu-$ARCH-$hash"
    if [ ! -f "$out/.done" ]; then
        rig_log "l1-qemu $ARCH: bundling qemu-system-arm:arm64 $ver"
        rm -rf "$out"
        mkdir -p "$out/debs" "$out/stage"
        local r="$out/root" stage="$out/stage" log="$out/apt.log"
        mkdir -p "$r/bin" "$r/lib" "$r/share/qemu"
        # The dependency closure (no recommends), as apt would install it on an empty system.
        qa_apt install -s --no-install-recommends -t bookworm-backports "qemu-system-arm=$ver" \
            >"$log" 2>&1 || { tail -n 30 "$log" >&2; rig_die "l1-qemu aarch64: cannot resolve qemu-system-arm $ver"; }
        local -a pkgs
        mapfile -t pkgs < <(awk '/^Inst / { v = $3; sub(/^\(/, "", v); print $2 "=" v }' "$log")
        [ ${#pkgs[@]} -gt 0 ] || rig_die "l1-qemu aarch64: no packages in the simulated install ($log)"
        rig_log "l1-qemu $ARCH: downloading ${#pkgs[@]} packages"
        (cd "$out/debs" && qa_apt download "${pkgs[@]}" >>"$log" 2>&1) ||
            { tail -n 30 "$log" >&2; rig_die "l1-qemu aarch64: download failed"; }
        local deb
        for deb in "$out"/debs/*.deb; do
            dpkg-deb -x "$deb" "$stage" || rig_die "l1-qemu aarch64: dpkg-deb -x $deb failed"
        done
        local bin
        bin=$(qa_resolve "$stage" "$stage/usr/bin/qemu-system-aarch64") ||
            rig_die "l1-qemu aarch64: no usr/bin/qemu-system-aarch64 in qemu-system-arm"
        cp "$bin" "$r/bin/qemu-system-aarch64"
        # Libraries: the NEEDED closure of the binary, each copied under its soname.
        local -a todo=("$r/bin/qemu-system-aarch64")
        local elf so f
        while [ ${#todo[@]} -gt 0 ]; do
            elf=${todo[0]}
            todo=("${todo[@]:1}")
            for so in $(qa_needed "$elf"); do
                [ -e "$r/lib/$so" ] && continue
                f=$(qa_find_lib "$stage" "$so") || rig_die "l1-qemu aarch64: $so (needed by $(basename "$elf")) not in the packages"
                cp "$f" "$r/lib/$so"
                todo+=("$r/lib/$so")
            done
        done
        # The dynamic loader (libc.so.6 names it as NEEDED too; make sure it is there).
        if [ ! -e "$r/lib/ld-linux-aarch64.so.1" ]; then
            f=$(qa_find_lib "$stage" ld-linux-aarch64.so.1) || rig_die "l1-qemu aarch64: no ld-linux-aarch64.so.1"
            cp "$f" "$r/lib/ld-linux-aarch64.so.1"
        fi
        chmod 755 "$r/bin/qemu-system-aarch64" "$r/lib/ld-linux-aarch64.so.1"
        if command -v aarch64-linux-gnu-strip >/dev/null 2>&1; then
            aarch64-linux-gnu-strip --strip-unneeded "$r/bin/qemu-system-aarch64" "$r"/lib/*.so* ||
                rig_die "l1-qemu aarch64: strip failed"
        fi
        cat >"$r/bin/qemu" <<WRAP
#!/bin/sh
# qemu-system-aarch64 $ver (Debian arm64) with its own libraries (generated by resources/rig/l1-qemu.sh)
D=\$(dirname "\$0")/..
exec "\$D/lib/ld-linux-aarch64.so.1" --library-path "\$D/lib" "\$D/bin/qemu-system-aarch64" -L "\$D/share/qemu" "\$@"
WRAP
        chmod 755 "$r/bin/qemu"
        grep '^Inst ' "$log" | sed 's/^Inst //' >"$out/packages.txt"
        printf '%s\n' "arch=$ARCH" "qemu-system-arm:arm64=$ver" "hash=$hash" >"$out/inputs.txt"
        rm -rf "$out/debs" "$stage"
        touch "$out/.done"
        rig_log "l1-qemu $ARCH: $(du -sh "$r" | cut -f1) in $r"
    fi
    rig_unlock
    echo "$out/root"
}

# qa_apt_cache_version : the bookworm-backports candidate of qemu-system-arm (arm64).
qa_apt_cache_version() {
    local -a opts
    mapfile -t opts < <(rig_apt_opts "$QA_APT")
    local d v
    d=$(rig_apt_dir "$QA_APT")
    v=$(apt-cache "${opts[@]}" -o "Dir::State::status=$d/status" \
        -o "APT::Architecture=arm64" -o "APT::Architectures=arm64" \
        -t bookworm-backports policy qemu-system-arm 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
    [ -n "$v" ] && [ "$v" != "(none)" ] || rig_die "l1-qemu aarch64: qemu-system-arm not found in bookworm-backports (arm64)"
    echo "$v"
}

if [ "$ARCH" = aarch64 ]; then
    bundle_aarch64
    exit 0
fi

# ---------------------------------------------------------------- x86_64

rig_need_qemu x86_64
PKG_VER=$(dpkg-query -W -f='${Version}' qemu-system-x86)
HASH=$(rig_hash "$ARCH" "qemu-system-x86=$PKG_VER" "${BASH_SOURCE[0]}")
OUT="$RIG_CACHE/l1-qemu/$ARCH-$HASH"
if [ -f "$OUT/.done" ]; then
    echo "$OUT/root"
    exit 0
fi
rig_lock "l1-qemu-$ARCH-$HASH"
if [ ! -f "$OUT/.done" ]; then
    rig_log "l1-qemu $ARCH: bundling qemu-system-x86 $PKG_VER"
    rm -rf "$OUT"
    R="$OUT/root"
    mkdir -p "$R/bin" "$R/lib" "$R/share/qemu"
    BIN=$(command -v qemu-system-x86_64)
    cp -L "$BIN" "$R/bin/qemu-system-x86_64"
    # Every shared library by its soname, and the dynamic loader.
    ldd "$BIN" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }' | while read -r lib; do
        cp -L "$lib" "$R/lib/$(basename "$lib")"
    done
    LDSO=$(ldd "$BIN" | awk '/ld-linux/ { print ($3 ~ /^\//) ? $3 : $1; exit }')
    [ -f "$R/lib/$(basename "$LDSO")" ] || cp -L "$LDSO" "$R/lib/"
    # Firmware of q35 with -kernel: SeaBIOS, the linuxboot option ROM, the vapic ROM.
    for f in bios-256k.bin linuxboot_dma.bin kvmvapic.bin; do
        src=/usr/share/qemu/$f
        [ -e "$src" ] || src=/usr/share/seabios/$f
        [ -e "$src" ] || rig_die "l1-qemu: firmware $f not found (packages qemu-system-data, seabios)"
        cp -L "$src" "$R/share/qemu/$f"
    done
    cat >"$R/bin/qemu" <<WRAP
#!/bin/sh
# qemu-system-x86_64 $PKG_VER with its own libraries (generated by resources/rig/l1-qemu.sh)
D=\$(dirname "\$0")/..
exec "\$D/lib/$(basename "$LDSO")" --library-path "\$D/lib" "\$D/bin/qemu-system-x86_64" -L "\$D/share/qemu" "\$@"
WRAP
    chmod 755 "$R/bin/qemu"
    printf '%s\n' "arch=$ARCH" "qemu-system-x86=$PKG_VER" "hash=$HASH" >"$OUT/inputs.txt"
    touch "$OUT/.done"
    rig_log "l1-qemu $ARCH: $(du -sh "$R" | cut -f1) in $R"
fi
rig_unlock
echo "$OUT/root"

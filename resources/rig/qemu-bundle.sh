# qemu-bundle.sh: sourced by l1-qemu.sh and l0-qemu.sh (after lib.sh).
#
# qemu_bundle NAME DEBARCH SUITES RELEASE PKG BIN FIRMWARE : a Debian QEMU that runs on any
# glibc system, never installed: PKG (e.g. qemu-system-x86) for DEBARCH (amd64, arm64) from
# RELEASE (e.g. trixie-backports), downloaded with its dependency closure (no recommends, as
# apt would install it on an empty system) through a private apt configuration NAME (SUITES:
# the space-separated suites of its sources; its lists, cache and empty dpkg status under
# $RIG_CACHE/apt/NAME) and extracted with dpkg-deb -x into a staging root. The bundle:
#   ROOT/bin/BIN, ROOT/lib/*.so* (the NEEDED closure of BIN, read with readelf inside the
#   staging root, plus the dynamic loader), ROOT/bin/qemu (a wrapper running BIN through the
#   bundled loader with -L ROOT/share/qemu), and with FIRMWARE=yes ROOT/share/qemu/ (every
#   firmware file of the packages, symlinks resolved: SeaBIOS, option ROMs).
# The bundle's QEMU never loads the host's modules (QEMU_MODULE_DIR points into the bundle,
# where there are none): a module of another QEMU build would be refused or worse.
# Prints ROOT. Cache: $RIG_CACHE/qemu/NAME-HASH/, HASH over the package version, the suites
# and this file.

# qb_apt NAME DEBARCH apt-get-args... : apt-get with the private configuration NAME.
qb_apt() {
    local name=$1 debarch=$2
    shift 2
    local -a opts
    mapfile -t opts < <(rig_apt_opts "$name")
    local d
    d=$(rig_apt_dir "$name")
    DEBIAN_FRONTEND=noninteractive apt-get -q "${opts[@]}" \
        -o "Dir::State::status=$d/status" \
        -o "APT::Architecture=$debarch" -o "APT::Architectures=$debarch" "$@"
}

# qb_apt_setup NAME DEBARCH SUITES : write the private sources (mirror read from the machine's
# apt sources, as lib.sh's configurations do) and refresh the lists when older than
# $RIG_APT_MAX_AGE.
qb_apt_setup() {
    local name=$1 debarch=$2 suites=$3 d main sec key src="" s now stamp=0
    d=$(rig_apt_dir "$name")
    mkdir -p "$d/lists/partial" "$d/cache" "$RIG_CACHE/apt/archives/partial"
    main=$(rig_mirror_uri)
    sec=$(rig_security_uri)
    key=$(rig_keyring)
    for s in $suites; do
        case "$s" in
            *-security) src+="deb [arch=$debarch signed-by=$key] $sec $s main"$'\n' ;;
            *) src+="deb [arch=$debarch signed-by=$key] $main $s main"$'\n' ;;
        esac
    done
    [ -f "$d/status" ] || : >"$d/status"
    if [ ! -f "$d/sources.list" ] || [ "$(cat "$d/sources.list")" != "${src%$'\n'}" ]; then
        printf '%s' "$src" >"$d/sources.list"
        rm -f "$d/updated"
    fi
    now=$(date +%s)
    [ -f "$d/updated" ] && stamp=$(stat -c %Y "$d/updated")
    if [ $((now - stamp)) -ge "$RIG_APT_MAX_AGE" ]; then
        rig_log "apt ($name): updating private package lists from $main"
        qb_apt "$name" "$debarch" update >"$d/update.log" 2>&1 ||
            { tail -n 20 "$d/update.log" >&2; rig_die "apt-get update ($name) failed"; }
        touch "$d/updated"
    fi
}

# qb_version NAME DEBARCH RELEASE PKG : the candidate version of PKG in RELEASE.
qb_version() {
    local name=$1 debarch=$2 rel=$3 pkg=$4 d v
    local -a opts
    mapfile -t opts < <(rig_apt_opts "$name")
    d=$(rig_apt_dir "$name")
    v=$(apt-cache "${opts[@]}" -o "Dir::State::status=$d/status" \
        -o "APT::Architecture=$debarch" -o "APT::Architectures=$debarch" \
        -t "$rel" policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
    [ -n "$v" ] && [ "$v" != "(none)" ] || rig_die "qemu bundle: $pkg not found in $rel ($debarch)"
    echo "$v"
}

# qb_resolve STAGE PATH : follow symlinks inside the staging root (absolute targets are
# taken relative to STAGE) and print the regular file PATH leads to.
qb_resolve() {
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

# qb_find_lib STAGE MULTIARCH SONAME : the library file of SONAME in the staging root
# (multiarch and plain library directories first, then anywhere).
qb_find_lib() {
    local stage=$1 ma=$2 so=$3 dir f
    for dir in "lib/$ma" "usr/lib/$ma" lib lib64 usr/lib; do
        if [ -e "$stage/$dir/$so" ] || [ -L "$stage/$dir/$so" ]; then
            qb_resolve "$stage" "$stage/$dir/$so" && return 0
        fi
    done
    f=$(find "$stage" -name "$so" \( -type f -o -type l \) 2>/dev/null | head -n1)
    [ -n "$f" ] && qb_resolve "$stage" "$f"
}

qb_readelf() {
    if [ "$1" = arm64 ] && command -v aarch64-linux-gnu-readelf >/dev/null 2>&1; then
        shift
        aarch64-linux-gnu-readelf "$@"
    else
        shift
        readelf "$@"
    fi
}

qemu_bundle() {
    local name=$1 debarch=$2 suites=$3 rel=$4 pkg=$5 bin=$6 firmware=$7
    local ma ldso strip=strip
    case "$debarch" in
        amd64) ma=x86_64-linux-gnu; ldso=ld-linux-x86-64.so.2 ;;
        arm64) ma=aarch64-linux-gnu; ldso=ld-linux-aarch64.so.1
               command -v aarch64-linux-gnu-strip >/dev/null 2>&1 && strip=aarch64-linux-gnu-strip || strip="" ;;
        *) rig_die "qemu bundle: unknown Debian architecture '$debarch'" ;;
    esac
    qb_apt_setup "$name" "$debarch" "$suites"
    local ver major
    ver=$(qb_version "$name" "$debarch" "$rel" "$pkg")
    major=${ver#*:}
    major=${major%%.*}
    [ "$major" -ge 10 ] 2>/dev/null || rig_die "qemu bundle: $pkg $ver ($rel) is older than 10"
    local hash out
    hash=$(rig_hash "$name" "$pkg:$debarch=$ver" "$suites" "${BASH_SOURCE[0]}")
    out="$RIG_CACHE/qemu/$name-$hash"
    if [ -f "$out/.done" ]; then
        echo "$out/root"
        return 0
    fi
    rig_lock "qemu-$name-$hash"
    if [ ! -f "$out/.done" ]; then
        rig_log "qemu bundle $name: $pkg:$debarch $ver ($rel)"
        rm -rf "$out"
        mkdir -p "$out/debs" "$out/stage"
        local r="$out/root" stage="$out/stage" log="$out/apt.log"
        mkdir -p "$r/bin" "$r/lib" "$r/share/qemu" "$r/modules"
        qb_apt "$name" "$debarch" install -s --no-install-recommends -t "$rel" "$pkg=$ver" \
            >"$log" 2>&1 || { tail -n 30 "$log" >&2; rig_die "qemu bundle: cannot resolve $pkg $ver"; }
        local -a pkgs
        mapfile -t pkgs < <(awk '/^Inst / { v = $3; sub(/^\(/, "", v); print $2 "=" v }' "$log")
        [ ${#pkgs[@]} -gt 0 ] || rig_die "qemu bundle: no packages in the simulated install ($log)"
        # The firmware packages, when wanted, even where they are only recommended.
        if [ "$firmware" = yes ]; then
            local fw
            for fw in seabios ipxe-qemu; do
                grep -q "^Inst $fw " "$log" || pkgs+=("$fw=$(qb_version "$name" "$debarch" "$rel" "$fw")")
            done
        fi
        rig_log "qemu bundle $name: downloading ${#pkgs[@]} packages"
        (cd "$out/debs" && qb_apt "$name" "$debarch" download "${pkgs[@]}" >>"$log" 2>&1) ||
            { tail -n 30 "$log" >&2; rig_die "qemu bundle: download failed"; }
        local deb
        for deb in "$out"/debs/*.deb; do
            dpkg-deb -x "$deb" "$stage" || rig_die "qemu bundle: dpkg-deb -x $deb failed"
        done
        local f
        f=$(qb_resolve "$stage" "$stage/usr/bin/$bin") || rig_die "qemu bundle: no usr/bin/$bin in $pkg"
        cp "$f" "$r/bin/$bin"
        # Libraries: the NEEDED closure of the binary, each copied under its soname.
        local -a todo=("$r/bin/$bin")
        local elf so
        while [ ${#todo[@]} -gt 0 ]; do
            elf=${todo[0]}
            todo=("${todo[@]:1}")
            for so in $(qb_readelf "$debarch" -d "$elf" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
                [ -e "$r/lib/$so" ] && continue
                f=$(qb_find_lib "$stage" "$ma" "$so") || rig_die "qemu bundle: $so (needed by $(basename "$elf")) not in the packages"
                cp "$f" "$r/lib/$so"
                todo+=("$r/lib/$so")
            done
        done
        if [ ! -e "$r/lib/$ldso" ]; then
            f=$(qb_find_lib "$stage" "$ma" "$ldso") || rig_die "qemu bundle: no $ldso"
            cp "$f" "$r/lib/$ldso"
        fi
        chmod 755 "$r/bin/$bin" "$r/lib/$ldso"
        if [ -n "$strip" ]; then
            $strip --strip-unneeded "$r/bin/$bin" "$r"/lib/*.so* || rig_die "qemu bundle: strip failed"
        fi
        if [ "$firmware" = yes ]; then
            # Debian's QEMU also looks in /usr/share/seabios and /usr/lib/ipxe/qemu, which
            # would be the host's files: the bundle's go into the -L directory it searches first.
            [ -d "$stage/usr/share/qemu" ] || rig_die "qemu bundle: no usr/share/qemu in the packages"
            local p dir
            for dir in usr/share/qemu usr/share/seabios usr/lib/ipxe/qemu; do
                for p in "$stage/$dir"/*; do
                    [ -e "$p" ] || [ -L "$p" ] || continue
                    [ -d "$p" ] && continue
                    f=$(qb_resolve "$stage" "$p") || continue # a link into a package not fetched
                    cp "$f" "$r/share/qemu/$(basename "$p")"
                done
            done
            # What q35 with -kernel and the rig's virtio NIC load (the one bundle with firmware).
            for f in bios-256k.bin linuxboot_dma.bin kvmvapic.bin efi-virtio.rom; do
                [ -f "$r/share/qemu/$f" ] || rig_die "qemu bundle: no firmware $f in the packages"
            done
        fi
        cat >"$r/bin/qemu" <<WRAP
#!/bin/sh
# $bin $ver (Debian $debarch, $rel) with its own libraries (generated by resources/rig/qemu-bundle.sh)
D=\$(dirname "\$0")/..
export QEMU_MODULE_DIR="\$D/modules"
exec "\$D/lib/$ldso" --library-path "\$D/lib" "\$D/bin/$bin" -L "\$D/share/qemu" "\$@"
WRAP
        chmod 755 "$r/bin/qemu"
        grep '^Inst ' "$log" | sed 's/^Inst //' >"$out/packages.txt"
        printf '%s\n' "name=$name" "$pkg:$debarch=$ver" "release=$rel" "hash=$hash" >"$out/inputs.txt"
        rm -rf "$out/debs" "$stage"
        touch "$out/.done"
        rig_log "qemu bundle $name: $(du -sh "$r" | cut -f1) in $r"
    fi
    rig_unlock
    echo "$out/root"
}

#!/usr/bin/env bash
# build-kernel.sh ARCH
#
# Builds (when not cached) the rig kernel for ARCH (aarch64 | x86_64) from Debian's
# kernel source package and prints the path of the kernel image on stdout. The same
# image serves as the L1 kernel (QEMU TCG) and as the L2 guest kernel.
#
#   aarch64: linux-source-7.3 (trixie-backports), allnoconfig + kernel/aarch64-l1.config
#            + kernel/aarch64-smmuv3-force-canwbs.patch (rig only)  -> Image
#   x86_64:  linux-source-6.12 (trixie / trixie-security), x86_64_defconfig
#            + kernel/x86_64-l1.config                               -> bzImage (+ vmlinux)
#
# Cache: $RIG_CACHE/kernel/ARCH-HASH/, HASH over the source package and version, the
# config fragment, the patches, the compiler version and this script.
# $RIG_CACHE/kernel/ARCH is a symlink to the newest build.
#
# Environment: RIG_CACHE, RIG_JOBS (3), RIG_NICE (10), RIG_LINUX_VERSION (pin the
# source package version), RIG_KEEP_BUILD=1 (keep the build tree),
# RIG_PROGRESS_INTERVAL (30 s).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ARCH=${1:-}
[ -n "$ARCH" ] || rig_die "usage: $0 aarch64|x86_64"
rig_arch_check "$ARCH"

PATCHES=()
case "$ARCH" in
    aarch64)
        SRC_PKG=linux-source-7.3 SRC_REL=trixie-backports
        KARCH=arm64 CROSS=aarch64-linux-gnu- BASE_CONFIG=allnoconfig
        TARGET=Image IMAGE=arch/arm64/boot/Image
        PATCHES=("$RIG_LIB_DIR/kernel/aarch64-smmuv3-force-canwbs.patch")
        TOOLS=(gcc-aarch64-linux-gnu)
        ;;
    x86_64)
        SRC_PKG=linux-source-6.12 SRC_REL=
        KARCH=x86 CROSS= BASE_CONFIG=x86_64_defconfig
        TARGET=bzImage IMAGE=arch/x86/boot/bzImage
        TOOLS=()
        ;;
esac
FRAGMENT="$RIG_LIB_DIR/kernel/$ARCH-l1.config"
[ -f "$FRAGMENT" ] || rig_die "missing $FRAGMENT"

# Host tools for a kernel build.
rig_need_host_pkgs make gcc libc6-dev flex bison bc libelf-dev libssl-dev perl \
    xz-utils cpio "${TOOLS[@]}"

rig_apt_setup fetch
SRC_VER=${RIG_LINUX_VERSION:-$(rig_pkg_version "$SRC_PKG" "$SRC_REL")}
CC_VER=$("${CROSS}gcc" --version | head -n1)

HASH=$(rig_hash "$ARCH" "$SRC_PKG=$SRC_VER" "$BASE_CONFIG" "$TARGET" "$CC_VER" \
    "$FRAGMENT" "${PATCHES[@]}" "${BASH_SOURCE[0]}")
OUT="$RIG_CACHE/kernel/$ARCH-$HASH"

publish() {
    ln -sfn "$ARCH-$HASH" "$RIG_CACHE/kernel/$ARCH"
    echo "$OUT/$TARGET"
}

if [ -f "$OUT/.done" ]; then
    rig_log "kernel $ARCH: cached ($OUT)"
    publish
    exit 0
fi

rig_lock "kernel-$ARCH-$HASH"
if [ -f "$OUT/.done" ]; then
    rig_log "kernel $ARCH: built by another job ($OUT)"
    publish
    exit 0
fi

START=$(date +%s)
rig_log "kernel $ARCH: building $SRC_PKG $SRC_VER (hash $HASH); this takes ~15 min"

# Source: the .deb is extracted into the cache once per version.
SRC_DEB_DIR="$RIG_CACHE/src/${SRC_PKG}_$SRC_VER"
rig_fetch_deb "$SRC_PKG" "$SRC_VER" "$SRC_DEB_DIR"
TARBALL=$(ls "$SRC_DEB_DIR"/usr/src/"$SRC_PKG".tar.* 2>/dev/null | head -n1)
[ -f "$TARBALL" ] || rig_die "no source tarball in $SRC_PKG"

# Leftover trees of interrupted/failed builds of this arch (not being built now) go.
for old in "$RIG_CACHE"/build/kernel-"$ARCH"-*; do
    [ -d "$old" ] || continue
    oh=${old##*-}
    [ "$oh" = "$HASH" ] && continue
    if (exec 8>"$RIG_CACHE/locks/kernel-$ARCH-$oh.lock" && flock -n 8); then
        rig_log "kernel $ARCH: removing stale build tree $old"
        rm -rf "$old"
    fi
done
BUILD="$RIG_CACHE/build/kernel-$ARCH-$HASH"
rm -rf "$BUILD"
mkdir -p "$BUILD" "$OUT"
rig_log "kernel $ARCH: unpacking $(basename "$TARBALL")"
nice -n "$RIG_NICE" tar -xf "$TARBALL" -C "$BUILD"
KSRC="$BUILD/$SRC_PKG"
[ -d "$KSRC" ] || KSRC=$(find "$BUILD" -mindepth 1 -maxdepth 1 -type d | head -n1)

for p in "${PATCHES[@]}"; do
    rig_log "kernel $ARCH: applying $(basename "$p")"
    patch -d "$KSRC" -p1 --forward --batch <"$p" >/dev/null || rig_die "patch $(basename "$p") failed"
done

KMAKE=(make -C "$KSRC" ARCH="$KARCH" CROSS_COMPILE="$CROSS" KBUILD_BUILD_USER=rig
       KBUILD_BUILD_HOST=rig KBUILD_BUILD_TIMESTAMP="rig $SRC_VER")
LOG="$OUT/build.log"
{
    "${KMAKE[@]}" "$BASE_CONFIG"
    (cd "$KSRC" && ARCH="$KARCH" scripts/kconfig/merge_config.sh -m .config "$FRAGMENT")
    "${KMAKE[@]}" olddefconfig
} >"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; rig_die "kernel $ARCH: configuration failed (log: $LOG)"; }

# Every option of the fragment must have the value asked for (the last one wins).
awk '
    /^CONFIG_[A-Za-z0-9_]+=/ { split($0, kv, "="); want[kv[1]] = substr($0, length(kv[1]) + 2) }
    /^# CONFIG_[A-Za-z0-9_]+ is not set/ { want[$2] = "n" }
    END { for (k in want) print k "=" want[k] }
' "$FRAGMENT" | sort >"$OUT/wanted.txt"
BAD=0
while IFS='=' read -r key val; do
    got=$(grep -E "^$key=" "$KSRC/.config" | cut -d= -f2- || true)
    [ -n "$got" ] || got=n
    if [ "$got" != "$val" ]; then
        rig_log "kernel $ARCH: config mismatch: $key wanted $val, got $got"
        BAD=1
    fi
done <"$OUT/wanted.txt"
[ "$BAD" = 0 ] || [ "${RIG_ALLOW_CONFIG_MISMATCH:-0}" = 1 ] ||
    rig_die "kernel $ARCH: the config fragment did not apply (set RIG_ALLOW_CONFIG_MISMATCH=1 to go on)"
cp "$KSRC/.config" "$OUT/config"

# Build in the background; rig_wait_build reports progress (compile steps done out of
# the steps of the last build of this arch, else of resources/rig/kernel/ARCH.steps).
STEPS_FILE="$RIG_CACHE/kernel/$ARCH.steps"
rig_log "kernel $ARCH: make -j$RIG_JOBS $TARGET (nice $RIG_NICE), log: $LOG"
nice -n "$RIG_NICE" "${KMAKE[@]}" -j"$RIG_JOBS" "$TARGET" >>"$LOG" 2>&1 &
MAKE_PID=$!
trap 'kill "$MAKE_PID" 2>/dev/null || true' EXIT INT TERM
RC=0
rig_wait_build "$MAKE_PID" "$LOG" "kernel $ARCH" "$START" \
    "$STEPS_FILE" "$RIG_LIB_DIR/kernel/$ARCH.steps" || RC=$?
trap - EXIT INT TERM
if [ "$RC" != 0 ]; then
    grep -E 'error|Error' "$LOG" | tail -n 20 >&2 || true
    tail -n 20 "$LOG" >&2
    rig_die "kernel $ARCH: build failed (log: $LOG, tree kept in $BUILD)"
fi
rig_count_steps "$LOG" >"$STEPS_FILE"

cp "$KSRC/$IMAGE" "$OUT/$TARGET"
cp "$KSRC/System.map" "$OUT/System.map"
if [ "$ARCH" = x86_64 ]; then
    # ELF image for VMMs that boot through the PVH entry point.
    cp "$KSRC/vmlinux" "$OUT/vmlinux"
fi
printf '%s\n' "arch=$ARCH" "source=$SRC_PKG=$SRC_VER" "base=$BASE_CONFIG" "target=$TARGET" \
    "cc=$CC_VER" "fragment=$FRAGMENT" "patches=${PATCHES[*]}" "hash=$HASH" \
    "build_seconds=$(($(date +%s) - START))" >"$OUT/inputs.txt"
if [ "${RIG_KEEP_BUILD:-0}" != 1 ]; then
    rm -rf "$BUILD"
fi
touch "$OUT/.done"
rig_log "kernel $ARCH: done in $(rig_elapsed "$START"): $OUT/$TARGET"
publish

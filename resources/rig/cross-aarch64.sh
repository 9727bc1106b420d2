#!/usr/bin/env bash
# cross-aarch64.sh [--check]
#
# Rust cross toolchain for aarch64-unknown-linux-gnu binaries that go into the aarch64
# rig (rustup cannot add targets on these machines). Installs when missing, through the
# private host apt configuration (the machine's own apt lists are left alone):
#   rustc-web, cargo-web (bookworm-security), libstd-rust-web-dev:arm64 (after
#   dpkg --add-architecture arm64: this CHANGES the host's dpkg architectures),
#   gcc-aarch64-linux-gnu + libc6-dev-arm64-cross, qemu-user-static (bookworm-backports).
# Then prints the environment on stdout, for:
#   eval "$(bash resources/rig/cross-aarch64.sh)"
#   cargo build --release --target aarch64-unknown-linux-gnu     # /usr/bin/cargo
# Binaries are static (+crt-static: no libc needed in the initramfs); cargo's runner for
# the target is qemu-aarch64-static, so `cargo test --target ...` runs tests that do
# not need KVM/VFIO on the host.
#
# --check: also cross-builds a static hello world in a temporary directory and runs it
# under qemu-aarch64-static.
# --build DIR [CARGO_BUILD_ARGS...]: also cross-builds the cargo workspace at DIR
# (default args: --release -p vmm -p passthrough --bins) with
# CARGO_TARGET_DIR=DIR/target/aarch64, so the static binaries land in
# DIR/target/aarch64/aarch64-unknown-linux-gnu/release/; prints the env all the same.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    [ "$(id -u)" -eq 0 ] || rig_die "dpkg --add-architecture arm64 needs root"
    rig_log "adding dpkg architecture arm64"
    dpkg --add-architecture arm64
    # The private host lists must now include arm64 indexes.
    rm -f "$(rig_apt_dir host)/updated"
fi
rig_need_host_pkgs rustc-web cargo-web gcc-aarch64-linux-gnu libc6-dev-arm64-cross
rig_need_host_pkgs libstd-rust-web-dev:arm64
rig_need_host_pkgs -t bookworm-backports qemu-user-static
# rustc-web and the arm64 std must be the very same version.
V_HOST=$(dpkg-query -W -f='${Version}' rustc-web)
V_STD=$(dpkg-query -W -f='${Version}' libstd-rust-web-dev:arm64)
if [ "$V_HOST" != "$V_STD" ]; then
    rig_log "rustc-web $V_HOST != libstd-rust-web-dev:arm64 $V_STD: upgrading both"
    rig_apt_setup host
    rig_apt host install -y --no-install-recommends rustc-web cargo-web libstd-rust-web-dev:arm64 \
        >"$(rig_apt_dir host)/install.log" 2>&1 || rig_die "rust upgrade failed"
fi

ENV_LINES='export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu'

if [ "${1:-}" = --check ]; then
    T=$(mktemp -d /tmp/rig-cross-check.XXXXXX)
    trap 'rm -rf "$T"' EXIT
    (
        eval "$ENV_LINES"
        export CARGO_HOME="$T/cargo-home"
        cd "$T"
        mkdir -p hello/src
        printf '[package]\nname = "hello"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n' \
            >hello/Cargo.toml
        printf 'fn main() {\n    println!("hello from {}", std::env::consts::ARCH);\n}\n' \
            >hello/src/main.rs
        cd hello
        START=$(date +%s)
        /usr/bin/cargo build --offline --release --target aarch64-unknown-linux-gnu -q ||
            exit 1
        BIN=target/aarch64-unknown-linux-gnu/release/hello
        file "$BIN" >&2 2>/dev/null || true
        if command -v readelf >/dev/null && readelf -l "$BIN" | grep -q INTERP; then
            echo "not static (has an ELF interpreter)" >&2
            exit 1
        fi
        OUT=$(qemu-aarch64-static "$BIN")
        echo "check: built in $(rig_elapsed "$START"), runs under qemu-aarch64-static: $OUT" >&2
        [ "$OUT" = "hello from aarch64" ]
    ) || rig_die "cross-build check failed"
    rig_log "cross-aarch64: check OK ($(/usr/bin/rustc --version))"
fi

if [ "${1:-}" = --build ]; then
    DIR=${2:-}
    [ -n "$DIR" ] && [ -f "$DIR/Cargo.toml" ] || rig_die "--build needs a cargo workspace directory"
    DIR=$(cd "$DIR" && pwd)
    shift 2
    ARGS=("$@")
    [ ${#ARGS[@]} -gt 0 ] || ARGS=(--release -p vmm -p passthrough --bins)
    START=$(date +%s)
    rig_log "cross-aarch64: cargo build ${ARGS[*]} in $DIR"
    (
        eval "$ENV_LINES"
        export CARGO_TARGET_DIR="$DIR/target/aarch64"
        cd "$DIR"
        # stdout of cargo goes to stderr: stdout carries the env lines only.
        /usr/bin/cargo build --target aarch64-unknown-linux-gnu "${ARGS[@]}" >&2
    ) || rig_die "cross-aarch64: cargo build failed"
    rig_log "cross-aarch64: built in $(rig_elapsed "$START"): $DIR/target/aarch64/aarch64-unknown-linux-gnu/"
fi

echo "$ENV_LINES"

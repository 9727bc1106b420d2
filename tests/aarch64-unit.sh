#!/usr/bin/env bash
# Cross-builds the workspace's unit tests for aarch64 (Debian's rustc-web; rustup cannot add
# targets here) and runs them under qemu-user. Installs what it needs when missing: the cross
# toolchain and qemu-user-static (resources/rig/cross-aarch64.sh) and device-tree-compiler
# (the FDT test checks our blob with dtc).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/resources/rig/lib.sh"
rig_need_host_pkgs device-tree-compiler
ENV=$(bash "$ROOT/resources/rig/cross-aarch64.sh")
eval "$ENV"
cd "$ROOT"
CARGO_TARGET_DIR="$ROOT/target/aarch64" /usr/bin/cargo test --target aarch64-unknown-linux-gnu \
    -p vmm -p devices -p passthrough -p api --lib

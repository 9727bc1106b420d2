#!/usr/bin/env bash
# Cross-builds the workspace's unit tests for aarch64 (Debian's rustc-web; rustup cannot add
# targets here) and runs them under qemu-aarch64-static. Installs the cross toolchain when
# missing (resources/rig/cross-aarch64.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENV=$(bash "$ROOT/resources/rig/cross-aarch64.sh")
eval "$ENV"
cd "$ROOT"
CARGO_TARGET_DIR="$ROOT/target/aarch64" /usr/bin/cargo test --target aarch64-unknown-linux-gnu \
    -p vmm -p devices -p passthrough --lib

#!/usr/bin/env bash
# l0-qemu.sh ARCH RELEASE
#
# The QEMU that emulates the rig machine (L0) when the host's own is not wanted: Debian's
# qemu-system-x86 (amd64) from RELEASE (trixie or trixie-backports), bundled by
# qemu-bundle.sh with its libraries, loader and firmware (SeaBIOS, the option ROMs of q35 with
# a direct kernel boot and of the rig's virtio NIC), never installed. Prints the bundle's root;
# ROOT/bin/qemu runs it. run.sh uses it when RIG_L0_QEMU names a release (see there for why).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/qemu-bundle.sh"

ARCH=${1:-}
REL=${2:-}
[ -n "$ARCH" ] && [ -n "$REL" ] || rig_die "usage: $0 x86_64 trixie|trixie-backports"
[ "$ARCH" = x86_64 ] || rig_die "l0-qemu: only x86_64 is bundled (the aarch64 rig runs the host's QEMU)"
case "$REL" in
    trixie | trixie-backports) ;;
    *) rig_die "l0-qemu: release '$REL' is not one of trixie, trixie-backports" ;;
esac
qemu_bundle l0-qemu-amd64 amd64 "trixie trixie-updates trixie-security trixie-backports" \
    "$REL" qemu-system-x86 qemu-system-x86_64 yes

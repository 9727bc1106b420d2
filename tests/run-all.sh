#!/usr/bin/env bash
# The one command that runs all tests: unit/model tests, host-KVM tests, and (when enabled)
# the rig tests. See README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
if [ -x tests/rig.sh ]; then
    ./tests/rig.sh
fi

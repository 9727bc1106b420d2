#!/usr/bin/env bash
# Coverage-guided fuzzing of the VMM's parsers with AFL++ (cargo-afl), outside CI.
#
#   tests/fuzz.sh TARGET SECONDS      fuzz one target (see tests/fuzz/src/lib.rs) for SECONDS
#   tests/fuzz.sh --smoke [SECONDS]   every target for SECONDS (default 5): they build and run
#   tests/fuzz.sh --list              the targets
#
# Installs cargo-afl (the version of tests/fuzz/afl's afl crate) on first use into the cache
# outside the repo ($RIG_CACHE, default ~/.cache/iommufd-vmm-rig: cargo-afl-VERSION/; a few
# minutes cold, then reused by every clone), builds the harness in tests/fuzz/afl into the
# cache too (fuzz-target/; cargo rebuilds what changed), seeds from tests/fuzz/seeds/TARGET,
# and keeps findings in target/afl-out/TARGET (FUZZ_OUT overrides). Prints executions per second and the number
# of crashes per target; fails if a target crashed (each crash file is an input to keep as a
# regression unit test once fixed). Runs at nice 19.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
ROOT=$PWD
OUT=${FUZZ_OUT:-$ROOT/target/afl-out}
CACHE=${RIG_CACHE:-$HOME/.cache/iommufd-vmm-rig}
TARGET_DIR=${FUZZ_TARGET_DIR:-$CACHE/fuzz-target}
# cargo-afl must match the afl crate the harness links.
AFL_VERSION=$(awk '/^name = "afl"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' "$ROOT/tests/fuzz/afl/Cargo.lock")
AFL_ROOT=$CACHE/cargo-afl-$AFL_VERSION
export PATH="$AFL_ROOT/bin:$PATH"
# cargo-afl keeps the AFL++ it builds under XDG_DATA_HOME: in the cache as well.
export XDG_DATA_HOME=$CACHE/xdg

targets() { ls "$ROOT/tests/fuzz/seeds"; }

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

ensure_cargo_afl() {
    [ -x "$AFL_ROOT/bin/cargo-afl" ] && return
    if ! command -v cargo >/dev/null; then
        echo "fuzz: cargo is not installed (needs rustup's toolchain)" >&2
        exit 1
    fi
    [ -n "$AFL_VERSION" ] || { echo "fuzz: no afl crate in tests/fuzz/afl/Cargo.lock" >&2; exit 1; }
    echo "fuzz: installing cargo-afl $AFL_VERSION into $AFL_ROOT (first use; it builds AFL++, a few minutes)"
    local start=$SECONDS
    mkdir -p "$CACHE"
    nice -n 19 cargo install --locked --root "$AFL_ROOT" --version "$AFL_VERSION" cargo-afl
    echo "fuzz: cargo-afl installed in $((SECONDS - start)) s"
}

# AFL++ itself, built by cargo-afl once per rustc and cargo-afl version.
ensure_aflplusplus() {
    local id
    id=$(rustc -vV | awk '/^release:/ { r = $2 } /^commit-hash:/ { h = substr($2, 1, 7) } END { print "rustc-" r "-" h }')
    [ -d "$XDG_DATA_HOME/afl.rs/$id/afl.rs-$AFL_VERSION" ] && return
    echo "fuzz: building AFL++ for $id (first use; a few minutes)"
    local start=$SECONDS
    nice -n 19 cargo afl config --build
    echo "fuzz: AFL++ built in $((SECONDS - start)) s"
}

build() {
    (cd "$ROOT/tests/fuzz/afl" && nice -n 19 cargo afl build --release --target-dir "$TARGET_DIR")
}

# fuzz TARGET SECONDS: one AFL run; prints a summary line; returns 1 if it found crashes.
fuzz() {
    local t=$1 secs=$2 dir="$OUT/$1"
    local seeds="$ROOT/tests/fuzz/seeds/$t"
    [ -d "$seeds" ] || { echo "fuzz: no target $t (targets: $(targets | tr '\n' ' '))" >&2; exit 2; }
    mkdir -p "$dir"
    # Resume an earlier run's queue when there is one.
    local input="$seeds"
    [ -d "$dir/default/queue" ] && input=-
    AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
        AFL_SUPPRESS_ERROR_MESSAGES=1 AFL_NO_AFFINITY=1 \
        nice -n 19 cargo afl fuzz -i "$input" -o "$dir" -V "$secs" -t 2000 \
        -- "$TARGET_DIR/release/$t" >"$dir/afl.log" 2>&1 || {
        echo "fuzz: afl-fuzz failed for $t; see $dir/afl.log:" >&2
        tail -20 "$dir/afl.log" >&2
        return 1
    }
    local stats="$dir/default/fuzzer_stats"
    local execs eps crashes
    execs=$(awk -F' *: ' '$1=="execs_done"{print $2}' "$stats")
    eps=$(awk -F' *: ' '$1=="execs_per_sec"{print $2}' "$stats")
    crashes=$(awk -F' *: ' '$1=="saved_crashes"{print $2}' "$stats")
    printf 'fuzz: %-11s %4ss %10s execs %9s/s %s crashes\n' "$t" "$secs" "$execs" "$eps" "$crashes"
    if [ "${crashes:-0}" != 0 ]; then
        ls "$dir"/default/crashes/id:* >&2
        return 1
    fi
}

case "${1:-}" in
--list) targets ;;
--smoke)
    secs=${2:-5}
    ensure_cargo_afl
    ensure_aflplusplus
    build
    failed=0
    for t in $(targets); do
        fuzz "$t" "$secs" || failed=1
    done
    exit $failed
    ;;
"" | -*) usage ;;
*)
    [ $# = 2 ] || usage
    ensure_cargo_afl
    ensure_aflplusplus
    build
    fuzz "$1" "$2"
    ;;
esac

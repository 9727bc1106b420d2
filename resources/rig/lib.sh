# shellcheck shell=bash
# Common functions of the test-rig builder. Source it from bash:
#   . "$(dirname "$0")/lib.sh"
#
# Environment:
#   RIG_CACHE      cache root (default: $HOME/.cache/iommufd-vmm-rig)
#   RIG_JOBS       make -j for kernel builds (default: 3)
#   RIG_NICE       nice level of the kernel builds (default: 10)
#   RIG_APT_MAX_AGE  seconds after which the private apt lists are refreshed (default: 86400)
#   RIG_APT_MIRROR / RIG_APT_SECURITY_MIRROR
#                  override the Debian mirror URIs (default: read from the machine's apt sources)

set -o pipefail

RIG_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG_REPO_ROOT=$(cd "$RIG_LIB_DIR/../.." && pwd)
RIG_CACHE=${RIG_CACHE:-$HOME/.cache/iommufd-vmm-rig}
RIG_JOBS=${RIG_JOBS:-3}
RIG_NICE=${RIG_NICE:-10}
RIG_APT_MAX_AGE=${RIG_APT_MAX_AGE:-86400}

# Marker lines a scenario prints on the L1 serial console (anchored at line start).
RIG_PASS_MARKER='RIG-RESULT: PASS'
RIG_FAIL_MARKER='RIG-RESULT: FAIL'

# ---------------------------------------------------------------- messages
rig_log() {
    printf '[rig %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

rig_die() {
    printf '[rig %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
    exit 1
}

# rig_elapsed START_EPOCH -> "MmSSs"
rig_elapsed() {
    local s=$(($(date +%s) - $1))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

rig_arch_check() {
    case "$1" in
        aarch64|x86_64) ;;
        *) rig_die "unknown arch '$1' (expected aarch64 or x86_64)" ;;
    esac
}

# Debian architecture name of a rig arch.
rig_deb_arch() {
    case "$1" in
        aarch64) echo arm64 ;;
        x86_64) echo amd64 ;;
        *) rig_die "unknown arch '$1'" ;;
    esac
}

# ---------------------------------------------------------------- hashing
# rig_hash ITEM... : sha256 over the items, 16 hex digits. An item that names an
# existing file contributes its name and content; any other item contributes itself.
rig_hash() {
    local item
    for item in "$@"; do
        if [ -f "$item" ]; then
            printf 'file:%s\n' "$(basename "$item")"
            sha256sum <"$item"
        else
            printf 'str:%s\n' "$item"
        fi
    done | sha256sum | cut -c1-16
}

# ---------------------------------------------------------------- build progress
# rig_count_steps LOG : kbuild steps (CC, LD, AR, ...) logged so far.
rig_count_steps() {
    grep -cE '^  (CC|AS|LD|AR|HOSTCC|HOSTLD|OBJCOPY|GEN) ' "$1" || true
}

# rig_wait_build PID LOG LABEL START_EPOCH [STEPS_FILE...] : wait for a build, printing
# "N/TOTAL steps (~P%)" every $RIG_PROGRESS_INTERVAL (30) s, TOTAL read from the first
# existing STEPS_FILE. Returns the build's exit status.
rig_wait_build() {
    local pid=$1 log=$2 label=$3 start=$4 expected="" f n pct
    shift 4
    for f in "$@"; do
        if [ -s "$f" ]; then expected=$(head -n1 "$f"); break; fi
    done
    local interval=${RIG_PROGRESS_INTERVAL:-30}
    while kill -0 "$pid" 2>/dev/null; do
        for _ in $(seq "$interval"); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -0 "$pid" 2>/dev/null || break
        n=$(rig_count_steps "$log")
        if [ -n "$expected" ] && [ "$expected" -gt 0 ] 2>/dev/null; then
            pct=$((n * 100 / expected))
            [ "$pct" -le 99 ] || pct=99
            rig_log "$label: $n/$expected steps (~$pct%), $(rig_elapsed "$start") elapsed"
        else
            rig_log "$label: $n steps done, $(rig_elapsed "$start") elapsed"
        fi
    done
    wait "$pid"
}

# ---------------------------------------------------------------- locking
# rig_lock NAME : serialize concurrent builders of the same artifact (fd 9).
rig_lock() {
    mkdir -p "$RIG_CACHE/locks"
    exec 9>"$RIG_CACHE/locks/$1.lock"
    if ! flock -n 9; then
        rig_log "waiting for another builder holding lock '$1'"
        flock 9
    fi
}

rig_unlock() {
    exec 9>&-
}

# ---------------------------------------------------------------- apt mirror
# Print "URI<TAB>SUITE<TAB>SIGNED_BY" for every deb source line of the machine's own
# apt configuration (deb822 *.sources files and one-line sources.list files).
rig_system_sources() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && uris != "" && enabled != "no") {
                    nu = split(uris, u, " "); ns = split(suites, s, " ")
                    for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++)
                        printf "%s\t%s\t%s\n", u[i], s[j], signed
                }
                types = ""; uris = ""; suites = ""; signed = ""; enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key)
                val = $0; sub(/^[^:]*:[ \t]*/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "signed-by") signed = val
                else if (key == "enabled") enabled = tolower(val)
            }
            END { flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '
            /^[ \t]*deb[ \t]/ {
                signed = ""; i = 2
                if ($2 ~ /^\[/) {
                    opts = ""
                    for (i = 2; i <= NF; i++) { opts = opts " " $i; if ($i ~ /\]$/) { i++; break } }
                    if (match(opts, /signed-by=[^] ]*/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
                }
                printf "%s\t%s\t%s\n", $i, $(i + 1), signed
            }
        ' "$f"
    done
}

# The Debian main archive URI (not the security one).
rig_mirror_uri() {
    if [ -n "${RIG_APT_MIRROR:-}" ]; then echo "$RIG_APT_MIRROR"; return; fi
    local uri
    uri=$(rig_system_sources | awk -F'\t' '$2 !~ /-security$/ && $1 ~ /^https?:/ { print $1; exit }')
    [ -n "$uri" ] || rig_die "no Debian mirror found in /etc/apt/sources.list{,.d}; set RIG_APT_MIRROR"
    echo "${uri%/}"
}

# The Debian security archive URI.
rig_security_uri() {
    if [ -n "${RIG_APT_SECURITY_MIRROR:-}" ]; then echo "$RIG_APT_SECURITY_MIRROR"; return; fi
    local uri
    uri=$(rig_system_sources | awk -F'\t' '$2 ~ /-security$/ && $1 ~ /^https?:/ { print $1; exit }')
    if [ -z "$uri" ]; then
        # Same host layout as the main archive: <base>/debian -> <base>/debian-security.
        uri="$(rig_mirror_uri)-security"
    fi
    echo "${uri%/}"
}

rig_keyring() {
    local k
    k=$(rig_system_sources | awk -F'\t' '$3 ~ /^\// { print $3; exit }')
    if [ -n "$k" ] && [ -f "$k" ]; then echo "$k"; return; fi
    echo /usr/share/keyrings/debian-archive-keyring.gpg
}

# ---------------------------------------------------------------- private apt
# Two private apt configurations live under $RIG_CACHE/apt:
#   host  : bookworm (+updates, security, backports), for the few tools installed on
#           the host (qemu-system-*, cross gcc, kernel build deps). The machine's own
#           apt configuration and lists are left untouched.
#   fetch : trixie (+backports, security) and bookworm-backports for amd64 and arm64,
#           with an empty dpkg status: used only to download packages (kernel sources,
#           busybox-static) that are extracted into the cache, never installed.

rig_apt_dir() { echo "$RIG_CACHE/apt/$1"; }

# rig_apt_opts NAME -> one apt option per line
rig_apt_opts() {
    local d
    d=$(rig_apt_dir "$1")
    printf '%s\n' \
        "-o" "Dir::Etc::SourceList=$d/sources.list" \
        "-o" "Dir::Etc::SourceParts=/dev/null" \
        "-o" "Dir::Etc::Preferences=/dev/null" \
        "-o" "Dir::Etc::PreferencesParts=/dev/null" \
        "-o" "Dir::State::Lists=$d/lists" \
        "-o" "Dir::Cache=$d/cache" \
        "-o" "Dir::Cache::pkgcache=$d/cache/pkgcache.bin" \
        "-o" "Dir::Cache::srcpkgcache=$d/cache/srcpkgcache.bin" \
        "-o" "Dir::Cache::Archives=$RIG_CACHE/apt/archives" \
        "-o" "Acquire::Languages=none" \
        "-o" "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false" \
        "-o" "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false" \
        "-o" "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false" \
        "-o" "APT::Get::List-Cleanup=false"
    if [ "$1" = fetch ]; then
        printf '%s\n' \
            "-o" "Dir::State::status=$d/status" \
            "-o" "APT::Architecture=amd64" \
            "-o" "APT::Architectures::=amd64" \
            "-o" "APT::Architectures::=arm64"
    fi
}

# rig_apt NAME apt-get-args... : run apt-get with the private configuration NAME.
rig_apt() {
    local name=$1; shift
    local -a opts
    mapfile -t opts < <(rig_apt_opts "$name")
    DEBIAN_FRONTEND=noninteractive apt-get -q "${opts[@]}" "$@"
}

rig_apt_cache() {
    local name=$1; shift
    local -a opts
    mapfile -t opts < <(rig_apt_opts "$name")
    apt-cache "${opts[@]}" "$@"
}

# rig_apt_setup NAME : write the private sources and refresh its lists when stale.
rig_apt_setup() {
    local name=$1 d main sec key src
    d=$(rig_apt_dir "$name")
    mkdir -p "$d/lists/partial" "$d/cache" "$RIG_CACHE/apt/archives/partial"
    main=$(rig_mirror_uri)
    sec=$(rig_security_uri)
    key=$(rig_keyring)
    case "$name" in
        host)
            src="deb [signed-by=$key] $main bookworm main
deb [signed-by=$key] $main bookworm-updates main
deb [signed-by=$key] $main bookworm-backports main
deb [signed-by=$key] $sec bookworm-security main"
            ;;
        fetch)
            src="deb [signed-by=$key] $main trixie main
deb [signed-by=$key] $main trixie-backports main
deb [signed-by=$key] $sec trixie-security main
deb [signed-by=$key] $main bookworm-backports main"
            [ -f "$d/status" ] || : >"$d/status"
            ;;
        *) rig_die "unknown apt config '$name'" ;;
    esac
    if [ ! -f "$d/sources.list" ] || [ "$(cat "$d/sources.list")" != "$src" ]; then
        printf '%s\n' "$src" >"$d/sources.list"
        rm -f "$d/updated"
    fi
    local now stamp=0
    now=$(date +%s)
    [ -f "$d/updated" ] && stamp=$(stat -c %Y "$d/updated")
    if [ $((now - stamp)) -ge "$RIG_APT_MAX_AGE" ]; then
        rig_log "apt ($name): updating private package lists from $main"
        rig_apt "$name" update >"$d/update.log" 2>&1 ||
            { tail -n 20 "$d/update.log" >&2; rig_die "apt-get update ($name) failed"; }
        touch "$d/updated"
    fi
}

# rig_pkg_version NAME[:ARCH] [RELEASE] : candidate version in the fetch config.
rig_pkg_version() {
    local pkg=$1 rel=${2:-} v
    if [ -n "$rel" ]; then
        v=$(rig_apt_cache fetch -t "$rel" policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
    else
        v=$(rig_apt_cache fetch policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
    fi
    [ -n "$v" ] && [ "$v" != "(none)" ] || rig_die "package $pkg not found in the private apt lists (${rel:-any suite})"
    echo "$v"
}

# rig_fetch_deb NAME[:ARCH] VERSION DESTDIR : download one .deb (fetch config) and
# extract it with dpkg-deb -x into DESTDIR (cached: done once per version).
rig_fetch_deb() {
    local pkg=$1 ver=$2 dest=$3
    if [ -f "$dest/.extracted" ]; then return 0; fi
    rig_apt_setup fetch
    local tmp
    tmp=$(mktemp -d "$RIG_CACHE/apt/dl.XXXXXX")
    rig_log "downloading $pkg=$ver"
    (cd "$tmp" && rig_apt fetch download "$pkg=$ver" >"$tmp/download.log" 2>&1) ||
        { cat "$tmp/download.log" >&2; rm -rf "$tmp"; rig_die "apt-get download $pkg=$ver failed"; }
    rm -rf "$dest"
    mkdir -p "$dest"
    dpkg-deb -x "$tmp"/*.deb "$dest" || rig_die "dpkg-deb -x $pkg failed"
    rm -rf "$tmp"
    touch "$dest/.extracted"
}

# ---------------------------------------------------------------- host tools
# rig_need_host_pkgs [-t RELEASE] PKG... : install missing packages on the host through
# the private host configuration (e.g. qemu from bookworm-backports).
rig_need_host_pkgs() {
    local rel=""
    if [ "${1:-}" = -t ]; then rel=$2; shift 2; fi
    local p missing=()
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || rig_die "missing host packages (${missing[*]}); run as root or install them"
    rig_apt_setup host
    rig_log "installing host packages: ${missing[*]}${rel:+ (from $rel)}"
    local log="$RIG_CACHE/apt/host/install.log"
    if [ -n "$rel" ]; then
        rig_apt host install -y --no-install-recommends -t "$rel" "${missing[@]}" >"$log" 2>&1
    else
        rig_apt host install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1
    fi || { tail -n 30 "$log" >&2; rig_die "apt-get install ${missing[*]} failed"; }
    rig_apt host clean >/dev/null 2>&1 || true
}

# qemu >= 10 from bookworm-backports (the stable one lacks what the rigs need).
rig_need_qemu() {
    local arch=$1 pkg bin
    case "$arch" in
        aarch64) pkg=qemu-system-arm; bin=qemu-system-aarch64 ;;
        x86_64) pkg=qemu-system-x86; bin=qemu-system-x86_64 ;;
    esac
    if command -v "$bin" >/dev/null 2>&1; then
        local major
        major=$("$bin" --version | sed -n '1s/.*version \([0-9]*\).*/\1/p')
        [ "${major:-0}" -ge 10 ] && return 0
    fi
    rig_need_host_pkgs -t bookworm-backports "$pkg"
    if ! dpkg-query -W -f='${Version}' "$pkg" | grep -q bpo; then
        rig_apt_setup host
        rig_apt host install -y --no-install-recommends -t bookworm-backports "$pkg" \
            >"$RIG_CACHE/apt/host/install.log" 2>&1 || rig_die "installing $pkg from bookworm-backports failed"
    fi
}

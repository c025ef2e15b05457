#!/usr/bin/env bash
# Build (and cache) the rootbox worker kernel.
#
#   images/kernel/build.sh OUT_DIR
#
# Source: Debian's `linux-source-6.1` package. Config: `make tinyconfig` +
# images/kernel/worker.config (merged with merge_config.sh) + `make olddefconfig`,
# then every option the fragment sets is verified in the final .config.
#
# Cache key = sha256(worker.config + linux-source-6.1 version + this script).
# Result: OUT_DIR/KEY/{vmlinux,bzImage,.config,source,release} and the symlink OUT_DIR/current -> KEY.
# On a cache hit prints "cached" and exits 0.
#
# Environment:
#   JOBS=N        parallel make jobs (default: nproc)
#   KEEP_BUILD=1  keep the extracted/compiled tree (OUT_DIR/build-KEY) after success
set -euo pipefail

PKG=linux-source-6.1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FRAGMENT="$HERE/worker.config"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"

log() { printf 'kernel: %s\n' "$*" >&2; }
die() { printf 'kernel: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
[ -f "$FRAGMENT" ] || die "missing $FRAGMENT"

START=$(date +%s)

# --- apt helpers (another process may hold the dpkg/apt locks) -------------------
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_retry() {
    # apt_retry ARGS... : run `apt-get ARGS`, waiting for the locks and retrying.
    local i
    for i in $(seq 1 30); do
        if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
            -o DPkg::Lock::Timeout=120 "$@"; then
            return 0
        fi
        log "apt-get $* failed (attempt $i/30; lock held?), retrying in 10 s"
        sleep 10
    done
    return 1
}

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

ensure_packages() {
    local missing=() p
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing: ${missing[*]}"
    if ! apt_retry install --no-install-recommends "${missing[@]}"; then
        log "install failed; running apt-get update once and retrying"
        apt_retry update || true
        apt_retry install --no-install-recommends "${missing[@]}" \
            || die "could not install ${missing[*]}"
    fi
}

# --- cache key ---------------------------------------------------------------------
if is_installed "$PKG"; then
    SRC_VERSION="$(dpkg-query -W -f='${Version}' "$PKG")"
else
    SRC_VERSION="$(apt-cache policy "$PKG" 2>/dev/null | awk '/Candidate:/{print $2; exit}')"
    if [ -z "$SRC_VERSION" ] || [ "$SRC_VERSION" = "(none)" ]; then
        apt_retry update || true
        SRC_VERSION="$(apt-cache policy "$PKG" 2>/dev/null | awk '/Candidate:/{print $2; exit}')"
    fi
    if [ -z "$SRC_VERSION" ] || [ "$SRC_VERSION" = "(none)" ]; then
        die "no $PKG package available"
    fi
fi

KEY="$(
    {
        printf 'worker.config\n'; cat "$FRAGMENT"
        printf '\n%s version\n%s\n' "$PKG" "$SRC_VERSION"
        printf 'build.sh\n'; cat "$SELF"
    } | sha256sum | cut -c1-64
)"
DEST="$OUT/$KEY"

publish_current() {
    ln -sfn "$KEY" "$OUT/.current.tmp.$$"
    mv -Tf "$OUT/.current.tmp.$$" "$OUT/current"
}

if [ -f "$DEST/vmlinux" ] && [ -f "$DEST/bzImage" ]; then
    publish_current
    log "$DEST ($PKG $SRC_VERSION)"
    echo "cached"
    exit 0
fi

# One build per OUT_DIR at a time; re-check the cache once we hold the lock.
exec 9>"$OUT/.lock"
if ! flock -n 9; then
    log "another build holds $OUT/.lock; waiting"
    flock 9
fi
if [ -f "$DEST/vmlinux" ] && [ -f "$DEST/bzImage" ]; then
    publish_current
    echo "cached"
    exit 0
fi

log "building $KEY ($PKG $SRC_VERSION)"

# --- toolchain + source ---------------------------------------------------------------
ensure_packages make gcc libc6-dev flex bison libelf-dev bc xz-utils cpio

BUILD="$OUT/build-$KEY"
rm -rf "$BUILD"
mkdir -p "$BUILD"

TARBALL=""
if is_installed "$PKG" || apt_retry install --no-install-recommends "$PKG"; then
    TARBALL="$(dpkg -L "$PKG" | grep -E '^/usr/src/linux-source-[^/]*\.tar\.(xz|bz2|gz)$' | head -n1 || true)"
fi
if [ -z "$TARBALL" ] || [ ! -f "$TARBALL" ]; then
    # Fallback without touching the system: apt-get download + dpkg -x.
    log "using apt-get download + dpkg -x"
    (cd "$BUILD" && apt-get -q download "$PKG=$SRC_VERSION") || die "apt-get download $PKG failed"
    dpkg -x "$BUILD"/"${PKG}"_*.deb "$BUILD/pkg"
    TARBALL="$(find "$BUILD/pkg/usr/src" -maxdepth 1 -name 'linux-source-*.tar.*' | head -n1)"
    [ -n "$TARBALL" ] || die "no source tarball in $PKG"
fi
# The installed package may have been upgraded between computing the key and now.
if is_installed "$PKG"; then
    NOW_VERSION="$(dpkg-query -W -f='${Version}' "$PKG")"
    [ "$NOW_VERSION" = "$SRC_VERSION" ] \
        || die "$PKG changed from $SRC_VERSION to $NOW_VERSION during the build; rerun"
fi

log "extracting $TARBALL"
mkdir -p "$BUILD/src"
tar -xf "$TARBALL" -C "$BUILD/src" --strip-components=1
cd "$BUILD/src"

# Reproducible-ish build metadata (no host names in the image).
export KBUILD_BUILD_USER=rootbox KBUILD_BUILD_HOST=rootbox
export KBUILD_BUILD_TIMESTAMP="@${SOURCE_DATE_EPOCH:-0}"
JOBS="${JOBS:-$(nproc)}"

# --- config ----------------------------------------------------------------------
make -s ARCH=x86_64 tinyconfig
scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >"$BUILD/merge_config.log" 2>&1 \
    || { cat "$BUILD/merge_config.log" >&2; die "merge_config.sh failed"; }
make -s ARCH=x86_64 olddefconfig

# Verify: every `CONFIG_X=y` in the fragment is =y, every `# CONFIG_X is not set` is off.
bad=()
while read -r opt; do
    grep -qx "${opt}=y" .config || bad+=("${opt}=y (got: $(grep -E "^${opt}=|^# ${opt} is not set" .config || echo absent))")
done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=y[[:space:]]*$' "$FRAGMENT" | cut -d= -f1)
while read -r opt; do
    if grep -qE "^${opt}=[ym]" .config; then bad+=("${opt} should be unset (got: $(grep -E "^${opt}=" .config))"); fi
done < <(grep -E '^# CONFIG_[A-Za-z0-9_]+ is not set' "$FRAGMENT" | awk '{print $2}')
if [ ${#bad[@]} -ne 0 ]; then
    printf 'kernel: option not as requested after olddefconfig: %s\n' "${bad[@]}" >&2
    die "${#bad[@]} option(s) dropped; fix $FRAGMENT (see $BUILD/src/.config)"
fi
nwanted=$(grep -cE '^(CONFIG_[A-Za-z0-9_]+=y|# CONFIG_[A-Za-z0-9_]+ is not set)' "$FRAGMENT")
log "config verified: all $nwanted fragment options as requested"

# --- build -------------------------------------------------------------------------
log "make -j$JOBS bzImage"
make ARCH=x86_64 -j"$JOBS" bzImage >"$BUILD/make.log" 2>&1 \
    || { tail -n 60 "$BUILD/make.log" >&2; die "kernel build failed (log: $BUILD/make.log)"; }

TMP="$OUT/.tmp-$KEY.$$"
rm -rf "$TMP"
mkdir -p "$TMP"
cp vmlinux "$TMP/vmlinux"
cp arch/x86/boot/bzImage "$TMP/bzImage"
cp .config "$TMP/.config"
printf '%s %s\n' "$PKG" "$SRC_VERSION" >"$TMP/source"
make -s kernelrelease >"$TMP/release"
rm -rf "$DEST"
mv -T "$TMP" "$DEST"
publish_current

cd "$OUT"
[ "${KEEP_BUILD:-0}" = 1 ] || rm -rf "$BUILD"

END=$(date +%s)
log "built $DEST in $((END - START)) s (vmlinux $(stat -c %s "$DEST/vmlinux") B, bzImage $(stat -c %s "$DEST/bzImage") B)"
echo "built $KEY in $((END - START)) s"

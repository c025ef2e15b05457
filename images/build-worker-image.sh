#!/usr/bin/env bash
# build-worker-image.sh OUT_DIR WORKER_BIN
#
# Assembles the rootbox worker image root filesystem at OUT_DIR/rootfs.
# The tree is used as the root of a namespace container (pivot_root) and,
# later, packed as an initramfs, so it must be self-contained:
#
#   init                        -> bin/rootbox-worker
#   bin/rootbox-worker          copy of WORKER_BIN (static-pie), mode 0755
#   sbin/{mke2fs,e2fsck,resize2fs}, sbin/mkfs.ext4 -> mke2fs
#   etc/mke2fs.conf, etc/mtab -> /proc/self/mounts
#   lib/<multiarch>/*.so*       every shared library the tools need
#   <PT_INTERP path>            dynamic loader (symlink into lib/<multiarch>)
#   dev proc sys tmp target run empty mount points
#
# All e2fsprogs files and libraries come from Debian packages fetched with
# `apt-get download` and unpacked with `dpkg -x`; nothing is copied from the
# host's own /lib, so the image does not depend on what the host has
# installed. Shared libraries are found by walking the ELF NEEDED entries
# recursively and looking each soname up in the unpacked packages; when a
# soname is not found, the lib* dependencies of the packages fetched so far
# are fetched too, until it is (or nothing is left to try).
#
# Also writes OUT_DIR/manifest.json (package versions, worker sha256, date).
#
# Environment:
#   DEB_CACHE       where .deb files are kept between runs
#                   (default: OUT_DIR/../debs)
#   E2FS_TOOLS      e2fsprogs programs to include
#                   (default: "mke2fs e2fsck resize2fs")
#   EXTRA_PACKAGES  extra Debian packages to fetch for library lookup
#   SOURCE_DATE_EPOCH  if set, used as the manifest's build date
#
# Needs root (chroot is used to check the result), apt-get, dpkg, readelf.
# Re-running is cheap: .debs are reused from DEB_CACHE when the candidate
# version is already there, and the old rootfs is only replaced once the new
# one has passed its checks.

set -euo pipefail
umask 022

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

warn() {
    printf '%s: warning: %s\n' "$prog" "$*" >&2
}

log() {
    printf '%s: %s\n' "$prog" "$*" >&2
}

usage() {
    printf 'usage: %s OUT_DIR WORKER_BIN\n' "$prog" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
[[ $EUID -eq 0 ]] || die "must run as root (dpkg -x ownership, chroot checks)"

for cmd in apt-get apt-cache dpkg dpkg-deb readelf sha256sum chroot flock; do
    command -v "$cmd" >/dev/null 2>&1 || die "missing required command: $cmd"
done

[[ -f $2 ]] || die "worker binary not found: $2"
mkdir -p "$1"
OUT_DIR=$(realpath "$1")
WORKER_BIN=$(realpath "$2")
DEB_CACHE=${DEB_CACHE:-$(dirname "$OUT_DIR")/debs}
mkdir -p "$DEB_CACHE"
DEB_CACHE=$(realpath "$DEB_CACHE")
read -r -a E2FS_TOOLS <<<"${E2FS_TOOLS:-mke2fs e2fsck resize2fs}"
read -r -a EXTRA_PACKAGES <<<"${EXTRA_PACKAGES:-}"

# The worker must be an ELF file; warn (but go on) if it is dynamically
# linked, since nothing here resolves its libraries.
[[ $(head -c 4 "$WORKER_BIN" | od -An -c | tr -d ' ') == '177ELF' ]] ||
    die "worker binary is not an ELF file: $WORKER_BIN"
if readelf -l "$WORKER_BIN" 2>/dev/null | grep -q 'program interpreter'; then
    warn "$WORKER_BIN is dynamically linked; the image expects a static binary"
fi

ARCH=$(dpkg --print-architecture)
case $ARCH in
    amd64) TRIPLET=x86_64-linux-gnu ;;
    arm64) TRIPLET=aarch64-linux-gnu ;;
    i386) TRIPLET=i386-linux-gnu ;;
    armhf) TRIPLET=arm-linux-gnueabihf ;;
    ppc64el) TRIPLET=powerpc64le-linux-gnu ;;
    s390x) TRIPLET=s390x-linux-gnu ;;
    riscv64) TRIPLET=riscv64-linux-gnu ;;
    *) die "unsupported architecture: $ARCH" ;;
esac

# Packages fetched up front; anything else is pulled in on demand.
BASE_PACKAGES=(e2fsprogs libext2fs2 libcom-err2 libblkid1 libuuid1 libc6)

# One build at a time per OUT_DIR.
exec 9>"$OUT_DIR/.build.lock"
flock 9

ROOTFS=$OUT_DIR/rootfs
NEW=$OUT_DIR/rootfs.new
OLD=$OUT_DIR/rootfs.old
# Leftovers of a run that was killed (we hold the lock, so none is in use).
if [[ ! -e $ROOTFS && -d $OLD ]]; then
    mv -T "$OLD" "$ROOTFS"
fi
rm -rf --one-file-system "$OUT_DIR"/.staging.* "$NEW" "$OLD"
STAGING=$(mktemp -d "$OUT_DIR/.staging.XXXXXX")

cleanup() {
    local rc=$?
    rm -rf --one-file-system "$STAGING"
    if [[ $rc -ne 0 ]]; then
        # Interrupted between the two renames of the swap: put the old back.
        if [[ ! -e $ROOTFS && -d $OLD ]]; then
            mv -T "$OLD" "$ROOTFS"
        fi
        rm -rf --one-file-system "$NEW"
        rm -f "$OUT_DIR/manifest.json.tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Fetching and unpacking Debian packages
# ---------------------------------------------------------------------------

declare -A PKG_VERSION=() # package -> version of the .deb used
declare -A PKG_DEB=()     # package -> path of the .deb used
FETCHED=()                # packages in the order they were fetched
APT_UPDATED=0

# prime_candidates PKG...: look up the versions apt would install for many
# packages with one apt-cache call (each call costs ~0.5 s), into CANDIDATE.
declare -A CANDIDATE=()
prime_candidates() {
    local pkg ver
    local -a args=()
    for pkg in "$@"; do
        args+=("$pkg:$ARCH")
    done
    while read -r pkg ver; do
        CANDIDATE[$pkg]=$ver
    done < <(apt-cache policy "${args[@]}" 2>/dev/null | awk '
        /^[^ ].*:$/ { pkg = $0; sub(/:$/, "", pkg); sub(/:.*/, "", pkg) }
        $1 == "Candidate:" && $2 != "(none)" { print pkg, $2 }')
}

# candidate_version PKG: the version apt would install, or nothing.
candidate_version() {
    if [[ -n ${CANDIDATE[$1]:-} ]]; then
        printf '%s\n' "${CANDIDATE[$1]}"
        return 0
    fi
    apt-cache policy "$1:$ARCH" 2>/dev/null |
        awk '$1 == "Candidate:" && $2 != "(none)" { print $2; exit }'
}

# cached_deb PKG QVER: path of the cached .deb of PKG at (file-name quoted)
# version QVER, for this architecture or "all"; nothing if not cached.
cached_deb() {
    local a
    for a in "$ARCH" all; do
        if [[ -f $DEB_CACHE/${1}_${2}_$a.deb ]]; then
            printf '%s\n' "$DEB_CACHE/${1}_${2}_$a.deb"
            return 0
        fi
    done
}

# fetch_pkg PKG: make sure a .deb of PKG is in DEB_CACHE (downloading the
# candidate version if it is not there yet) and unpack it to STAGING/PKG.
fetch_pkg() {
    local pkg=$1 ver deb qver
    [[ -n ${PKG_DEB[$pkg]:-} ]] && return 0

    ver=$(candidate_version "$pkg")
    if [[ -z $ver && $APT_UPDATED -eq 0 ]]; then
        log "no candidate for $pkg in the apt lists; running apt-get update"
        apt-get update -qq -o Acquire::Retries=3 || warn "apt-get update failed"
        APT_UPDATED=1
        ver=$(candidate_version "$pkg")
    fi

    deb=
    if [[ -n $ver ]]; then
        # apt-get download writes the epoch colon as %3a.
        qver=${ver//:/%3a}
        deb=$(cached_deb "$pkg" "$qver")
        if [[ -z $deb ]]; then
            log "downloading $pkg $ver"
            (cd "$DEB_CACHE" &&
                apt-get download -q -o Acquire::Retries=3 \
                    -o APT::Sandbox::User=root "$pkg:$ARCH=$ver" >&2) ||
                die "apt-get download $pkg=$ver failed"
            deb=$(cached_deb "$pkg" "$qver")
            [[ -n $deb ]] || die "download of $pkg left no .deb in $DEB_CACHE"
            # Drop superseded versions of the same package.
            find "$DEB_CACHE" -maxdepth 1 -name "${pkg}_*.deb" \
                ! -name "${deb##*/}" -delete
        fi
    else
        # Offline and no apt lists: fall back to the newest cached .deb.
        deb=$(find "$DEB_CACHE" -maxdepth 1 \( -name "${pkg}_*_${ARCH}.deb" \
            -o -name "${pkg}_*_all.deb" \) | sort -V | tail -n 1)
        [[ -n $deb ]] || die "package $pkg: no apt candidate and nothing cached"
        warn "no apt candidate for $pkg; using cached ${deb##*/}"
    fi

    [[ $(dpkg-deb -f "$deb" Package) == "$pkg" ]] || die "$deb is not package $pkg"
    mkdir -p "$STAGING/pkgs/$pkg"
    dpkg -x "$deb" "$STAGING/pkgs/$pkg"
    PKG_VERSION[$pkg]=$(dpkg-deb -f "$deb" Version)
    PKG_DEB[$pkg]=$deb
    FETCHED+=("$pkg")
}

# expand_packages: fetch the lib* dependencies (Depends/Pre-Depends, first
# alternative) of every package fetched so far. Sets EXPANDED to 1 if any
# new package was fetched, 0 if there was nothing left to fetch. (Not used
# as a condition, so that set -e stays in force inside fetch_pkg.)
EXPANDED=0
expand_packages() {
    local pkg dep
    EXPANDED=0
    local -a deps=()
    for pkg in "${FETCHED[@]}"; do
        mapfile -t deps < <(
            {
                dpkg-deb -f "${PKG_DEB[$pkg]}" Pre-Depends
                dpkg-deb -f "${PKG_DEB[$pkg]}" Depends
            } | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:.*//' \
                -e 's/[[:space:]]//g' | grep '^lib' || true
        )
        for dep in "${deps[@]}"; do
            if [[ -z ${PKG_DEB[$dep]:-} ]]; then
                fetch_pkg "$dep"
                EXPANDED=1
            fi
        done
    done
}

# ---------------------------------------------------------------------------
# Finding files in the unpacked packages
# ---------------------------------------------------------------------------

LIB_DIRS=("lib/$TRIPLET" "usr/lib/$TRIPLET" lib usr/lib lib64 usr/lib64)
BIN_DIRS=(sbin usr/sbin bin usr/bin)
declare -A USED_PKG=() # packages that contributed a file to the image

# find_in_pkgs NAME DIR...: set FOUND to the path of the first NAME found in
# one of the DIRs of the unpacked packages (in fetch order), and mark that
# package as used. Returns 1 if there is none. Sets a variable rather than
# printing, so that USED_PKG is not lost in a command substitution.
FOUND=
find_in_pkgs() {
    local name=$1 pkg dir
    shift
    FOUND=
    for pkg in "${FETCHED[@]}"; do
        for dir in "$@"; do
            if [[ -e $STAGING/pkgs/$pkg/$dir/$name ]]; then
                USED_PKG[$pkg]=1
                FOUND=$STAGING/pkgs/$pkg/$dir/$name
                return 0
            fi
        done
    done
    return 1
}

# elf_needed FILE: the sonames in FILE's NEEDED entries.
elf_needed() {
    readelf -d "$1" 2>/dev/null |
        sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]/\1/p'
}

# elf_interp FILE: the PT_INTERP path of FILE, if any.
elf_interp() {
    readelf -l "$1" 2>/dev/null |
        sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p'
}

# ---------------------------------------------------------------------------
# Assemble the tree
# ---------------------------------------------------------------------------

prime_candidates "${BASE_PACKAGES[@]}" "${EXTRA_PACKAGES[@]}"
for pkg in "${BASE_PACKAGES[@]}" "${EXTRA_PACKAGES[@]}"; do
    fetch_pkg "$pkg"
done

mkdir -p "$NEW"/{bin,sbin,etc,"lib/$TRIPLET"}
for d in dev proc sys tmp target run; do
    mkdir -p "$NEW/$d"
    chmod 0755 "$NEW/$d"
done
chmod 1777 "$NEW/tmp"

# The worker, and /init for the initramfs case.
cp "$WORKER_BIN" "$NEW/bin/rootbox-worker"
chmod 0755 "$NEW/bin/rootbox-worker"
ln -s bin/rootbox-worker "$NEW/init"

# e2fsprogs programs and config.
for tool in "${E2FS_TOOLS[@]}"; do
    find_in_pkgs "$tool" "${BIN_DIRS[@]}" ||
        die "$tool not found in the e2fsprogs packages"
    cp -L "$FOUND" "$NEW/sbin/$tool"
    chmod 0755 "$NEW/sbin/$tool"
done
if [[ -e $NEW/sbin/mke2fs ]]; then
    ln -s mke2fs "$NEW/sbin/mkfs.ext4"
fi
find_in_pkgs mke2fs.conf etc || die "etc/mke2fs.conf not found in e2fsprogs"
cp -L "$FOUND" "$NEW/etc/mke2fs.conf"
chmod 0644 "$NEW/etc/mke2fs.conf"
# e2fsprogs checks whether a device is mounted via /proc/mounts or /etc/mtab.
ln -s /proc/self/mounts "$NEW/etc/mtab"

# Resolve shared libraries: breadth-first over NEEDED, starting at the tools.
declare -A HAVE_LIB=()
declare -A INTERPS=()
queue=()
for tool in "${E2FS_TOOLS[@]}"; do
    queue+=("$NEW/sbin/$tool")
done
while [[ ${#queue[@]} -gt 0 ]]; do
    file=${queue[0]}
    queue=("${queue[@]:1}")

    interp=$(elf_interp "$file")
    [[ -n $interp ]] && INTERPS[$interp]=1

    while read -r soname; do
        [[ -z $soname || -n ${HAVE_LIB[$soname]:-} ]] && continue
        until find_in_pkgs "$soname" "${LIB_DIRS[@]}"; do
            log "$soname not in fetched packages; fetching their lib* dependencies"
            expand_packages
            [[ $EXPANDED -eq 1 ]] ||
                die "cannot find $soname (needed by ${file#"$NEW"/}) in any fetched package; add its package to EXTRA_PACKAGES"
        done
        cp -L "$FOUND" "$NEW/lib/$TRIPLET/$soname"
        HAVE_LIB[$soname]=1
        queue+=("$NEW/lib/$TRIPLET/$soname")
    done < <(elf_needed "$file")
done

# The dynamic loader: its real file lives in lib/TRIPLET (it is normally also
# a NEEDED of libc); the PT_INTERP path, if elsewhere, is a relative symlink.
for interp in "${!INTERPS[@]}"; do
    [[ $interp == /* ]] || die "relative PT_INTERP not supported: $interp"
    name=${interp##*/}
    if [[ -z ${HAVE_LIB[$name]:-} ]]; then
        find_in_pkgs "$name" "${LIB_DIRS[@]}" ||
            die "dynamic loader $name not found in the fetched packages"
        cp -L "$FOUND" "$NEW/lib/$TRIPLET/$name"
        HAVE_LIB[$name]=1
    fi
    chmod 0755 "$NEW/lib/$TRIPLET/$name"
    dir=${interp%/*}
    if [[ $dir != "/lib/$TRIPLET" ]]; then
        # One "../" per path component of the loader's directory.
        up=$(printf '%s' "${dir#/}" | sed -e 's|[^/][^/]*|..|g')
        mkdir -p "$NEW$dir"
        ln -sfn "$up/lib/$TRIPLET/$name" "$NEW$interp"
    fi
done

# ---------------------------------------------------------------------------
# Check that the tools run inside the new tree, before it replaces the old
# ---------------------------------------------------------------------------

# run_in_chroot NAME ARGS...: run a program in the new tree; output to a file.
chroot_log=$STAGING/chroot.log
run_in_chroot() {
    local rc=0
    env -i PATH=/sbin:/bin chroot "$NEW" "$@" >"$chroot_log" 2>&1 || rc=$?
    return "$rc"
}

check_fail() {
    sed 's/^/    /' "$chroot_log" >&2
    die "$*"
}

for tool in mke2fs e2fsck; do
    if [[ -e $NEW/sbin/$tool ]]; then
        run_in_chroot "/sbin/$tool" -V || check_fail "chroot: /sbin/$tool -V failed"
        grep -q "^$tool " "$chroot_log" || check_fail "chroot: unexpected /sbin/$tool -V output"
    fi
done
if [[ -e $NEW/sbin/resize2fs ]]; then
    # Without arguments resize2fs prints its usage and exits 1; a loader
    # failure would exit 127 with "error while loading shared libraries".
    rc=0
    run_in_chroot /sbin/resize2fs || rc=$?
    if [[ $rc -ne 1 ]] || ! grep -q '^Usage: .*resize2fs' "$chroot_log"; then
        check_fail "chroot: /sbin/resize2fs did not print its usage (exit $rc)"
    fi
fi

# A real round trip on a small image file: make, check, grow, check.
# There is no /proc in the chroot, so etc/mtab (-> /proc/self/mounts) is
# briefly an empty file: resize2fs refuses to run when it cannot tell
# whether the device is mounted.
if [[ -e $NEW/sbin/mke2fs && -e $NEW/sbin/e2fsck && -e $NEW/sbin/resize2fs ]]; then
    img=/tmp/.smoke.ext4
    rm -f "$NEW/etc/mtab"
    : >"$NEW/etc/mtab"
    run_in_chroot /sbin/mkfs.ext4 -q -F "$img" 8M || check_fail "chroot: mkfs.ext4 failed"
    run_in_chroot /sbin/e2fsck -f -n "$img" || check_fail "chroot: e2fsck failed"
    run_in_chroot /sbin/resize2fs "$img" 16M || check_fail "chroot: resize2fs failed"
    run_in_chroot /sbin/e2fsck -f -n "$img" || check_fail "chroot: e2fsck after resize failed"
    rm -f "$NEW$img" "$NEW/etc/mtab"
    ln -s /proc/self/mounts "$NEW/etc/mtab"
fi

# ---------------------------------------------------------------------------
# Swap the new tree in and write the manifest
# ---------------------------------------------------------------------------

if [[ -e $ROOTFS ]]; then
    mv -T "$ROOTFS" "$OLD"
fi
mv -T "$NEW" "$ROOTFS"
rm -rf --one-file-system "$OLD"

if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
    build_date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
else
    build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
fi
worker_sha=$(sha256sum "$ROOTFS/bin/rootbox-worker" | cut -d' ' -f1)
worker_size=$(stat -c %s "$ROOTFS/bin/rootbox-worker")
mapfile -t libs < <(printf '%s\n' "${!HAVE_LIB[@]}" | sort)

# The manifest, encoded by a real JSON encoder from tab-separated records on stdin (no
# field holds a tab or a newline: package names, versions, file names, hex digests).
{
    printf 'build_date\t%s\n' "$build_date"
    printf 'architecture\t%s\n' "$ARCH"
    printf 'worker\t%s\t%s\t%s\n' "$WORKER_BIN" "$worker_sha" "$worker_size"
    for pkg in "${FETCHED[@]}"; do
        [[ -n ${USED_PKG[$pkg]:-} ]] || continue
        printf 'package\t%s\t%s\t%s\t%s\n' "$pkg" "${PKG_VERSION[$pkg]}" \
            "${PKG_DEB[$pkg]##*/}" "$(sha256sum "${PKG_DEB[$pkg]}" | cut -d' ' -f1)"
    done
    for tool in "${E2FS_TOOLS[@]}"; do printf 'tool\tsbin/%s\n' "$tool"; done
    for lib in "${libs[@]}"; do printf 'library\tlib/%s/%s\n' "$TRIPLET" "$lib"; done
} | python3 -c '
import json, sys
m = {"packages": {}, "tools": [], "libraries": []}
for line in sys.stdin:
    kind, *f = line.rstrip("\n").split("\t")
    if kind in ("build_date", "architecture"):
        m[kind] = f[0]
    elif kind == "worker":
        m["worker"] = {"source": f[0], "path": "bin/rootbox-worker", "sha256": f[1], "size": int(f[2])}
    elif kind == "package":
        m["packages"][f[0]] = {"version": f[1], "deb": f[2], "sha256": f[3]}
    elif kind == "tool":
        m["tools"].append(f[0])
    elif kind == "library":
        m["libraries"].append(f[0])
order = ["build_date", "architecture", "worker", "packages", "tools", "libraries"]
json.dump({k: m[k] for k in order}, sys.stdout, indent=2)
print()
' >"$OUT_DIR/manifest.json.tmp"
mv -f "$OUT_DIR/manifest.json.tmp" "$OUT_DIR/manifest.json"

size=$(du -sh "$ROOTFS" | cut -f1)
printf 'worker image: %s (%s; e2fsprogs %s, %d libraries, worker sha256 %s)\n' \
    "$ROOTFS" "$size" "${PKG_VERSION[e2fsprogs]}" "${#libs[@]}" "${worker_sha:0:16}"

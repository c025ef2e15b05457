#!/usr/bin/env bash
# build-initramfs.sh ROOTFS OUT.cpio.gz
#
# Packs the worker image root filesystem (build-worker-image.sh's OUT_DIR/rootfs, whose
# /init is a symlink to bin/rootbox-worker) as the microVM's initramfs: a newc cpio archive,
# gzip-compressed (the worker kernel has RD_GZIP), reproducible:
#
#   - entries in byte order of their names (LC_ALL=C sort), "." first;
#   - every entry owned by 0:0 (cpio -R 0:0), whoever owns the tree;
#   - every mtime set to SOURCE_DATE_EPOCH (default 0), inode numbers renumbered
#     (cpio --reproducible), gzip without name or time stamp (gzip -n);
#   - /dev/console (char 5:1, 0600) included, so PID 1 has a console even before it
#     mounts devtmpfs over /dev (the kernel's own built-in list has one too, but a kernel
#     built with another INITRAMFS_SOURCE may not).
#
# The tree is copied to a staging directory first, so ROOTFS itself is never modified.
# Needs cpio, gzip, and root for the /dev/console node (without root the node is left out,
# with a warning).

set -euo pipefail
umask 022

prog=${0##*/}
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

[[ $# -eq 2 ]] || {
    printf 'usage: %s ROOTFS OUT.cpio.gz\n' "$prog" >&2
    exit 2
}
ROOTFS=$1
OUT=$2
[[ -d $ROOTFS ]] || die "not a directory: $ROOTFS"
[[ -e $ROOTFS/init || -L $ROOTFS/init ]] || die "$ROOTFS has no /init"
for cmd in cpio gzip find sort touch; do
    command -v "$cmd" >/dev/null 2>&1 || die "missing required command: $cmd"
done

OUT_DIR=$(dirname "$OUT")
mkdir -p "$OUT_DIR"
STAGING=$(mktemp -d "$OUT_DIR/.initramfs.XXXXXX")
trap 'rm -rf --one-file-system "$STAGING"' EXIT

cp -a "$ROOTFS" "$STAGING/root"
ROOT=$STAGING/root
mkdir -p "$ROOT/dev"
if [[ $EUID -eq 0 ]]; then
    rm -f "$ROOT/dev/console"
    mknod -m 0600 "$ROOT/dev/console" c 5 1
else
    printf '%s: warning: not root: /dev/console left out (the kernel default provides one)\n' \
        "$prog" >&2
fi

epoch=${SOURCE_DATE_EPOCH:-0}
find "$ROOT" -exec touch -h -d "@$epoch" {} +

(
    cd "$ROOT"
    find . -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --owner=0:0 --reproducible --quiet
) | gzip -9 -n >"$STAGING/out.cpio.gz"
mv -f "$STAGING/out.cpio.gz" "$OUT"

printf 'initramfs: %s (%s bytes, %s entries)\n' "$OUT" "$(stat -c %s "$OUT")" \
    "$(gzip -dc "$OUT" | cpio -t --quiet 2>/dev/null | wc -l)"

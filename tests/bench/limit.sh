#!/usr/bin/env bash
# limit.sh decompress LAYER...
#     Decompress every layer to /dev/null with the fastest decoder here (ISA-L's igzip for gzip,
#     pigz when it is missing; zstd for zstd): the floor for any tool that must read the image.
# limit.sh tree OUT SIZE TREE LAYER
#     Decompress + extract as root into TREE (a tmpfs) + mkfs.ext4 -d TREE, same geometry as
#     rootbox, then fsync OUT. No isolation, no verification, no whiteouts: one layer only.
set -euo pipefail

decompress() {
    case $(head -c 4 "$1" | od -An -tx1 | tr -d ' \n') in
    1f8b*) if command -v igzip >/dev/null; then igzip -dc "$1"; else pigz -dc "$1"; fi ;;
    28b52ffd) zstd -dcq "$1" ;;
    *) cat "$1" ;;
    esac
}

case $1 in
decompress)
    shift
    for l in "$@"; do decompress "$l" >/dev/null; done
    ;;
tree)
    out=$2 size=$3 tree=$4
    shift 4
    if [[ $# -ne 1 ]]; then
        echo "limit.sh tree: one layer only (whiteouts are not applied)" >&2
        exit 2
    fi
    decompress "$1" | tar -x -C "$tree" --numeric-owner -p --xattrs --xattrs-include='*'
    truncate -s "$size" "$out"
    mkfs.ext4 -F -q -b 4096 -I 256 -i 4096 -m 0 -L rootfs -d "$tree" "$out"
    sync "$out"
    ;;
*)
    echo "usage: limit.sh decompress LAYER... | limit.sh tree OUT SIZE TREE LAYER" >&2
    exit 2
    ;;
esac

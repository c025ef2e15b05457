#!/usr/bin/env bash
# predecessor.sh OUT SIZE WORKDIR LAYER...
#
# The pipeline rootbox replaces, rebuilt with standard tools. Meant to run as an unprivileged
# user (bench.py runs it under `setpriv --reuid=65534`), as the predecessor did:
#   1. per layer, in order: list it (tar -tv), apply its whiteouts to the staging tree and note
#      every entry's tar-header uid/gid/mode (layers.py scan), then extract it with
#      --no-same-owner, skipping whiteout files, devices, fifos and sockets;
#   2. truncate OUT to SIZE bytes and mkfs.ext4 -F -d STAGING -E root_owner=0:0 (same geometry
#      as rootbox: 4 KiB blocks, 256-byte inodes, one inode per 4 KiB, no reserved blocks);
#   3. one `debugfs -w -f SCRIPT` batch of `sif` lines restoring uid, gid and mode;
#   4. fsync OUT (rootbox fsyncs its output too).
# WORKDIR must be empty and writable; it holds the staging tree and the scripts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 size=$2 work=$3
shift 3
staging=$work/staging
meta=$work/meta.tsv
mkdir -p "$staging"
: >"$meta"

for layer in "$@"; do
    # GNU tar recognises gzip, zstd and plain tar by itself when reading a file.
    fix=$(tar -tv --numeric-owner --quoting-style=c -f "$layer" |
        python3 "$here/layers.py" scan "$staging" "$meta" "$work/exclude")
    tar -x -f "$layer" -C "$staging" --no-same-owner --no-same-permissions \
        --anchored --no-wildcards -X "$work/exclude"
    if [[ $fix == fixperm ]]; then
        chmod -R u+rwX "$staging"
    fi
done

truncate -s "$size" "$out"
mkfs.ext4 -F -q -b 4096 -I 256 -i 4096 -m 0 -L rootfs -E root_owner=0:0 -d "$staging" "$out"
python3 "$here/layers.py" sif "$meta" >"$work/sif.debugfs"
debugfs -w -f "$work/sif.debugfs" "$out" >/dev/null 2>"$work/debugfs.err"
# debugfs exits 0 whatever its commands did: any line but its banner is a failure.
if grep -v '^debugfs [0-9]' "$work/debugfs.err" | head -5 | grep -q .; then
    echo "predecessor: debugfs reported errors:" >&2
    grep -v '^debugfs [0-9]' "$work/debugfs.err" | head -5 >&2
    exit 1
fi
sync "$out"

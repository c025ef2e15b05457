"""Layer helper of the predecessor pipeline (predecessor.sh): the small script that applies
whiteouts and remembers tar-header ownership, as the predecessor had to since it extracted
without privileges.

  layers.py scan STAGING META EXCLUDE < LISTING
      LISTING is `tar -tv --numeric-owner --quoting-style=c` of one layer. Applies the layer's
      whiteouts and opaque markers to STAGING (which holds the lower layers only, so a whiteout
      never removes its own layer's entries), writes EXCLUDE (for tar --no-wildcards -X: the
      whiteout files themselves, devices, fifos, sockets) and appends the layer's entries and
      whiteouts to META. Prints "fixperm" when an entry lacks owner read (or dir write/search)
      bits, so the caller can make the staging tree readable for mkfs.
  layers.py sif META
      Replays META (all layers, in order) and prints one debugfs `sif` line per field (uid, gid,
      mode with the file type) for every path that ends up in the image.
"""

import os
import shutil
import sys

TYPES = {"-": 0o100000, "d": 0o040000, "l": 0o120000, "h": None, "c": None, "b": None,
         "p": None, "s": None}


def perm_bits(s):
    """Mode bits from an `ls -l` style string such as `rwsr-xr-t`."""
    m = 0
    for i, (ch, bit) in enumerate(zip(s, (0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 4, 2, 1))):
        if ch not in "-ST":
            m |= bit
        if i == 2 and ch in "sS":
            m |= 0o4000
        if i == 5 and ch in "sS":
            m |= 0o2000
        if i == 8 and ch in "tT":
            m |= 0o1000
    return m


def unquote(line, i):
    """Parses a C-quoted string starting at line[i] == '"'; returns (text, next index)."""
    assert line[i] == '"', line
    out = bytearray()
    i += 1
    esc = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "\\": 92, '"': 34,
           "?": 63, "'": 39}
    while line[i] != '"':
        c = line[i]
        if c == "\\":
            n = line[i + 1]
            if n in "01234567":
                out.append(int(line[i + 1:i + 4], 8))
                i += 4
                continue
            out.append(esc[n])
            i += 2
            continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape"), i + 1


def parse(line):
    """(type char, perm, uid, gid, name) of one `tar -tv` line."""
    mode, owner, rest = line.split(None, 2)
    uid, gid = (int(x) for x in owner.split("/"))
    name, _ = unquote(line, line.index('"'))
    return mode[0], perm_bits(mode[1:10]), uid, gid, name


def norm(name):
    """The image path of a member name: '/'-rooted, no './', no trailing '/'."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def remove(staging, path):
    full = staging + path
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return
    if os.path.isdir(full) and not os.path.islink(full):
        shutil.rmtree(full)
    else:
        os.unlink(full)
    del st


def scan(staging, meta_path, exclude_path):
    fixperm = False
    entries, whiteouts, opaque, excluded = [], [], [], []
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        t, perm, uid, gid, name = parse(line)
        path = norm(name)
        base = os.path.basename(path)
        if base == ".wh..wh..opq":
            opaque.append(os.path.dirname(path))
            excluded.append(name)
        elif base.startswith(".wh."):
            whiteouts.append(os.path.join(os.path.dirname(path), base[4:]))
            excluded.append(name)
        elif TYPES.get(t, None) is None and t != "h":
            excluded.append(name)  # devices, fifos, sockets: an unprivileged extract skips them
        else:
            entries.append((t, perm, uid, gid, path))
            if t == "d" and perm & 0o700 != 0o700 or t == "-" and not perm & 0o400:
                fixperm = True
    for d in opaque:
        full = staging + d
        if os.path.isdir(full) and not os.path.islink(full):
            for child in os.listdir(full):
                remove(staging, os.path.join(d, child))
    for w in whiteouts:
        remove(staging, w)
    with open(meta_path, "a") as m:
        for d in opaque:
            m.write(f"O\t{d}\n")
        for w in whiteouts:
            m.write(f"W\t{w}\n")
        for t, perm, uid, gid, path in entries:
            m.write(f"E\t{t}\t{perm:o}\t{uid}\t{gid}\t{path}\n")
    with open(exclude_path, "w") as x:
        for name in excluded:
            x.write(name + "\n")
    if fixperm:
        print("fixperm")


def under(path, d):
    return path == d or path.startswith(d.rstrip("/") + "/")


def sif(meta_path):
    state = {}
    with open(meta_path) as m:
        lines = m.read().splitlines()
    for line in lines:
        f = line.split("\t")
        if f[0] in ("W", "O"):
            d = f[1]
            for p in [p for p in state if under(p, d) and (f[0] == "W" or p != d)]:
                del state[p]
        else:
            t, perm, uid, gid, path = f[1], int(f[2], 8), int(f[3]), int(f[4]), f[5]
            if t == "h":
                state.pop(path, None)  # shares the target's inode, which gets its own lines
                continue
            state[path] = (TYPES[t] | perm, uid, gid)
    out = sys.stdout
    for path, (mode, uid, gid) in state.items():
        q = '"' + path.replace('"', '""') + '"'
        out.write(f"sif {q} uid {uid}\nsif {q} gid {gid}\nsif {q} mode 0{mode:o}\n")


if __name__ == "__main__":
    if sys.argv[1] == "scan":
        scan(sys.argv[2].rstrip("/"), sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "sif":
        sif(sys.argv[2])
    else:
        sys.exit(__doc__)

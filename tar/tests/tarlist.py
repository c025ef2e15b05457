#!/usr/bin/env python3
"""Lists tar archives with Python's tarfile, the independent reader of the differential test.

Reads one archive path per line on stdin and answers each with one JSON line on stdout:
{"ok": true, "members": [...]} or {"ok": false, "error": "..."}. Byte strings (names, link
targets, xattr names and values) are hex, recovered exactly through surrogateescape. A PAX
mtime is taken from its record text (tarfile keeps only a float) and split into seconds and
nanoseconds with decimal arithmetic, floor toward minus infinity.
"""
import decimal
import hashlib
import json
import sys
import tarfile

ENC = "utf-8"
ERR = "surrogateescape"


def raw(s):
    if isinstance(s, bytes):
        return s
    return s.encode(ENC, ERR)


def kind(ti):
    for name, test in (
        ("dir", ti.isdir),
        ("regular", ti.isreg),
        ("symlink", ti.issym),
        ("link", ti.islnk),
        ("char", ti.ischr),
        ("block", ti.isblk),
        ("fifo", ti.isfifo),
    ):
        if test():
            return name
    return "other"


I64 = 1 << 63


def fits(n):
    """An integer as JSON can carry it to the Rust side; None when outside int64."""
    return n if -I64 <= n < I64 else None


def mtime(ti):
    text = ti.pax_headers.get("mtime")
    if text:
        d = decimal.Decimal(text)
        if not d.is_finite() or abs(d.adjusted()) > 30:
            return [None, None]
        sec = int(d.to_integral_value(rounding=decimal.ROUND_FLOOR))
        nsec = int(((d - sec) * 1_000_000_000).to_integral_value(rounding=decimal.ROUND_FLOOR))
        return [fits(sec), nsec]
    return [fits(int(ti.mtime)), 0]


def member(tf, ti):
    out = {
        "name": raw(ti.name).hex(),
        "kind": kind(ti),
        "link": raw(ti.linkname).hex(),
        "mode": fits(ti.mode),
        "uid": fits(ti.uid),
        "gid": fits(ti.gid),
        "mtime": mtime(ti),
        "size": fits(ti.size),
        "devmajor": fits(ti.devmajor),
        "devminor": fits(ti.devminor),
        "xattrs": sorted(
            [raw(k[len("SCHILY.xattr."):]).hex(), raw(v).hex()]
            for k, v in ti.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        ),
    }
    if ti.isreg():
        h = hashlib.sha256()
        f = tf.extractfile(ti)
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
        out["sha256"] = h.hexdigest()
    return out


def listing(path):
    with tarfile.open(path, "r:", encoding=ENC, errors=ERR) as tf:
        return [member(tf, ti) for ti in tf]


def main():
    for line in sys.stdin:
        path = line.rstrip("\n")
        try:
            reply = json.dumps({"ok": True, "members": listing(path)})
        except Exception as e:  # any refusal is an answer, not a crash
            reply = json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"})
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

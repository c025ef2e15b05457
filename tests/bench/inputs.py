"""Benchmark inputs, all made locally and cached under build/bench/inputs/NAME.

Every input is a one-layer OCI image layout (tar+gzip layer, level 6) with the tag `bench`,
plus `bench-input.json` describing it (layer blob paths, entries, uncompressed bytes). A cached
input is reused while its recipe version matches; otherwise it is rebuilt into a temp dir and
renamed into place.

  debian      the Debian bookworm minbase tar (tests/fixtures/debian-minbase.sh) as one layer
  small20k    20,000 files of 100..900 bytes in nested directories (same generator as below)
  small200k   200,000 files, same generator: the pair gives the cost per file
  large       three 1 GiB files: one random 256 MiB then zeros, one of alternating 64 MiB
              random / zero runs (256 MiB random), one all zeros (zeros as real tar data,
              as `docker save` writes them)
"""

import base64
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile
import zlib

RECIPE = 2
TAG = "bench"
MIB = 1 << 20
GIB = 1 << 30
NAMES = ("debian", "small20k", "small200k", "large")


class LayerWriter(io.RawIOBase):
    """A write-only stream that gzips into a file, hashing both sides (diff_id and digest)."""

    def __init__(self, path, level=6):
        self.f = open(path, "wb")
        self.z = zlib.compressobj(level, zlib.DEFLATED, 31)  # gzip framing, mtime 0
        self.plain = hashlib.sha256()
        self.packed = hashlib.sha256()
        self.plain_bytes = 0
        self.packed_bytes = 0

    def writable(self):
        return True

    def _out(self, b):
        if b:
            self.packed.update(b)
            self.packed_bytes += len(b)
            self.f.write(b)

    def write(self, b):
        b = bytes(b)
        self.plain.update(b)
        self.plain_bytes += len(b)
        self._out(self.z.compress(b))
        return len(b)

    def finish(self):
        self._out(self.z.flush())
        self.f.close()


def _dir(tf, name, uid=0, gid=0, mode=0o755):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, 1700000000
    tf.addfile(ti)


def _file(tf, name, data, uid=0, gid=0, mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), mode, uid, gid, 1700000000
    tf.addfile(ti, io.BytesIO(data))


def small_files(w, n):
    """n files of 100..900 bytes (base64 text: compresses like real small files), 100 per leaf
    directory, leaf directories spread over 20 top-level ones; a few owners and modes so the
    ownership restore has work to do. Returns the entry count."""
    rnd = random.Random(n)
    entries = 0
    with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for d in ("srv", "srv/data"):
            _dir(tf, d)
            entries += 1
        leaves = (n + 99) // 100
        made_top = set()
        for i in range(n):
            leaf = i // 100
            top = leaf % 20
            if top not in made_top:
                _dir(tf, f"srv/data/t{top:02}")
                made_top.add(top)
                entries += 1
            ldir = f"srv/data/t{top:02}/d{leaf:05}"
            if i % 100 == 0:
                _dir(tf, ldir, uid=1000 if leaf % 3 == 0 else 0, gid=1000 if leaf % 3 == 0 else 0)
                entries += 1
            size = rnd.randint(100, 900)
            data = base64.b64encode(rnd.randbytes(size * 3 // 4 + 1))[:size]
            owner = (1000, 1000) if i % 7 == 0 else (0, 0)
            mode = 0o755 if i % 11 == 0 else 0o644
            _file(tf, f"{ldir}/f{i:06}.txt", data, uid=owner[0], gid=owner[1], mode=mode)
            entries += 1
        assert leaves <= entries
    return entries


class Pattern(io.RawIOBase):
    """A 1 GiB file's content: `runs` is a list of (length, random?) read in order."""

    def __init__(self, runs, seed):
        self.runs = list(runs)
        self.rnd = random.Random(seed)
        self.left = 0
        self.kind = False

    def readable(self):
        return True

    def readinto(self, b):
        while self.left == 0:
            if not self.runs:
                return 0
            self.left, self.kind = self.runs.pop(0)
        n = min(len(b), self.left, MIB)
        b[:n] = self.rnd.randbytes(n) if self.kind else bytes(n)
        self.left -= n
        return n


def large_files(w):
    patterns = {
        "big-random-head.bin": [(256 * MIB, True), (768 * MIB, False)],
        "big-striped.bin": [(64 * MIB, i % 4 == 0) for i in range(16)],
        "big-zero.bin": [(GIB, False)],
    }
    with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        _dir(tf, "data")
        for k, (name, runs) in enumerate(patterns.items()):
            ti = tarfile.TarInfo(f"data/{name}")
            ti.size, ti.mode, ti.mtime = sum(n for n, _ in runs), 0o644, 1700000000
            tf.addfile(ti, io.BufferedReader(Pattern(runs, k), MIB))
    return 1 + len(patterns)


def debian_layer(w, fixture):
    if not os.path.exists(fixture):
        sys.exit(f"bench: {fixture} is missing: run tests/fixtures/debian-minbase.sh first")
    entries = 0
    with tarfile.open(fixture, "r:") as tf:
        for _ in tf:
            entries += 1
    with open(fixture, "rb") as f:
        shutil.copyfileobj(f, w, 4 * MIB)
    return entries


def write_oci(out, layer_tmp, w, entries, name):
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs)
    digest = w.packed.hexdigest()
    os.rename(layer_tmp, os.path.join(blobs, digest))

    def blob(obj):
        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{d}", "size": len(data)}

    config = blob({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{w.plain.hexdigest()}"]},
    })
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = blob({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": f"sha256:{digest}",
            "size": w.packed_bytes,
        }],
    })
    manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    manifest["annotations"] = {"org.opencontainers.image.ref.name": TAG}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest]}, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    meta = {
        "name": name,
        "recipe": RECIPE,
        "source": f"oci:{out}:{TAG}",
        "layers": [f"blobs/sha256/{digest}"],  # relative to the layout
        "compression": "gzip",
        "entries": entries,
        "uncompressed_bytes": w.plain_bytes,
        "compressed_bytes": w.packed_bytes,
    }
    with open(os.path.join(out, "bench-input.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def ensure(name, root, fixture):
    """The input `name` under `root`, built when missing or from an older recipe."""
    out = os.path.join(root, name)
    meta_path = os.path.join(out, "bench-input.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("recipe") == RECIPE:
            meta["source"] = f"oci:{out}:{TAG}"
            meta["layers"] = [os.path.join(out, "blobs", "sha256", os.path.basename(p))
                              for p in meta["layers"]]  # absolute, for the contenders
            return meta
    except (OSError, ValueError):
        pass
    print(f"bench: making input {name} under {out} (cached afterwards)", flush=True)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    layer_tmp = os.path.join(tmp, "layer.tmp")
    w = LayerWriter(layer_tmp)
    if name == "debian":
        entries = debian_layer(w, fixture)
    elif name.startswith("small") and name.endswith("k"):
        entries = small_files(w, int(name[5:-1]) * 1000)
    elif name == "large":
        entries = large_files(w)
    else:
        sys.exit(f"bench: unknown input {name!r} (known: {', '.join(NAMES)})")
    w.finish()
    meta = write_oci(tmp, layer_tmp, w, entries, name)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return ensure(name, root, fixture)


if __name__ == "__main__":
    for n in sys.argv[2:]:
        print(json.dumps(ensure(n, sys.argv[1], "build/fixtures/debian-bookworm-minbase.tar")))

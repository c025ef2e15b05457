#!/usr/bin/env python3
"""Alternates two or more builds of rootbox on one source and prints the medians of their
`--json` timings: what a change did, measured the way `make bench` measures contenders
(interleaved in one process, so a machine that speeds up or slows down weighs on each the
same), but between builds of rootbox itself. Needs root (the container sandbox).

    scripts/ab-bench.py SOURCE ROUNDS LABEL=ROOTBOX[:WORKER_IMAGE] LABEL=... 

SOURCE is any `rootbox pull` source (`oci:build/bench/inputs/debian`, ...). Each round runs
every build once, the order rotating from round to round, after one untimed warm-up round.
Every build writes to a fresh directory (under $TMPDIR) after a `sync`. Per build it prints
the median wall time, rootbox's total, apply, shrink, canonicalise and fsck phases, the time
outside the job (resolving the source; hashing, syncing and placing the output), and every
sha256 it produced: more than one means a build was not reproducible.

Example (the build before a change against the working tree's):
    scripts/ab-bench.py oci:build/bench/inputs/small20k 9 \\
        old=/tmp/old/rootbox:/tmp/old/worker-image new=target/release/rootbox:build/worker-image
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def parse(arg):
    label, _, rest = arg.partition("=")
    binary, _, image = rest.partition(":")
    if not label or not binary:
        sys.exit(f"ab-bench: {arg!r} is not LABEL=ROOTBOX[:WORKER_IMAGE]")
    return label, os.path.abspath(binary), os.path.abspath(image) if image else None


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    source, rounds = sys.argv[1], int(sys.argv[2])
    builds = [parse(a) for a in sys.argv[3:]]
    runs = {label: [] for label, _, _ in builds}
    shas = {label: set() for label, _, _ in builds}
    work = tempfile.mkdtemp(prefix="ab-bench.")
    try:
        for r in range(rounds + 1):
            k = r % len(builds)
            for label, binary, image in builds[k:] + builds[:k]:
                out = os.path.join(work, "out")
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                subprocess.run(["sync"], check=True)
                argv = [binary, "pull", source, "-o", os.path.join(out, "image.ext4"),
                        "--isolation", "container", "--json"]
                if image:
                    argv += ["--worker-image", image]
                t = time.monotonic()
                p = subprocess.run(argv, capture_output=True, text=True)
                wall = time.monotonic() - t
                if p.returncode:
                    sys.exit(f"ab-bench: {label} failed (exit {p.returncode}): {p.stderr[-800:]}")
                report = json.loads(p.stdout)
                shas[label].add(report["sha256"])
                if r == 0:
                    continue
                tm = report["timings_ms"]
                w = tm["worker"]
                runs[label].append({
                    "wall": wall,
                    "total": tm["total"] / 1000,
                    "apply": w.get("apply", 0) / 1000,
                    "shrink": w.get("shrink", 0) / 1000,
                    "canonicalise": w.get("canonicalise", 0) / 1000,
                    "fsck": w.get("fsck", 0) / 1000,
                    "outside job": (tm["total"] - tm["sandbox_and_job"]) / 1000,
                })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = ["wall", "total", "apply", "shrink", "canonicalise", "fsck", "outside job"]
    print(f"{source}: medians of {rounds} alternated rounds, seconds")
    print(f"{'build':12}" + "".join(f"{k:>14}" for k in keys))
    for label, _, _ in builds:
        med = [statistics.median(x[k] for x in runs[label]) for k in keys]
        print(f"{label:12}" + "".join(f"{m:14.3f}" for m in med))
    for label, _, _ in builds:
        walls = " ".join(f"{x['wall']:.2f}" for x in runs[label])
        print(f"{label}: walls {walls}; sha256 {', '.join(sorted(shas[label]))}")


if __name__ == "__main__":
    main()

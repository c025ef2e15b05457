#!/usr/bin/env python3
"""Traces where ext4 places blocks on loop devices while a command runs, and compares builds.

For hunting reproducibility failures of the container sandbox (the host's kernel allocates
the image's blocks): two builds of one image give the same bytes only if their appliers
make the same allocations in the same order, so the first allocation that differs, and
what happened just before it, names the cause.

  scripts/alloc-trace.py record TRACE -- CMD [ARG...]   (root; tracefs)
  scripts/alloc-trace.py compare TRACE

`record` turns on, for loop devices only, ext4's allocation, free and buddy-load events and
jbd2's commit events (plus syncfs), runs CMD, and writes the trace to TRACE. `compare` groups
the trace by process: every process that allocated on a loop device is one applier (one
build); it prints each applier's device, CPUs and allocation count, which appliers made the
same allocation sequence (the goal excluded: ext4 colours it with the writer's PID, and
mballoc does not try it exactly), where the others first differ and the events just before,
the frees made while allocating, and how many syncfs calls returned while their device's
commit was still running (the commit's callback gives freed blocks back). Appliers whose
first allocations differ from most are left out, named, as builds of other images.
"""

import collections
import os
import re
import subprocess
import sys

TRACEFS = "/sys/kernel/tracing"
# dev_t as the kernel encodes it (major << 20 | minor): loop devices are major 7.
LOOP_FILTER = "dev >= 7340032 && dev < 8388608"
EXT4_EVENTS = [
    "ext4_allocate_blocks",
    "ext4_free_blocks",
    "ext4_mb_bitmap_load",
    "ext4_mb_buddy_bitmap_load",
    "ext4_read_block_bitmap_load",
    "ext4_sync_fs",
]
OTHER_EVENTS = [
    "jbd2/jbd2_start_commit",
    "jbd2/jbd2_end_commit",
    "syscalls/sys_enter_syncfs",
    "syscalls/sys_exit_syncfs",
]
# The line `record` ends a trace with: how many events were lost while it traced.
LOST_MARK = "# alloc-trace: events lost: "
# Allocations that must agree for two appliers to count as builds of one image.
PREFIX = 200
LINE = re.compile(r"\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+):? ?(.*)")


def write(path, value):
    with open(os.path.join(TRACEFS, path), "w") as f:
        f.write(value)


def read(path):
    with open(os.path.join(TRACEFS, path)) as f:
        return f.read()


def saved(path):
    """What to write to `path` to put back its current value."""
    value = read(path).strip()
    if path.endswith("/filter"):
        return "0" if value == "none" else value  # "0" clears a filter
    return value.split()[0]  # buffer_size_kb may read "7 (expanded: 1408)"


def record(out, cmd):
    if not os.path.isdir(os.path.join(TRACEFS, "events")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
    events = []
    for e in [f"ext4/{e}" for e in EXT4_EVENTS] + OTHER_EVENTS:
        if os.path.isdir(os.path.join(TRACEFS, "events", e)):
            events.append(e)
        else:
            print(f"alloc-trace: this kernel has no {e} event", file=sys.stderr)
    # Everything changed here is global to the machine: put back as found, and the ring
    # buffers (64 MiB per CPU while tracing) shrink again.
    changes = [("tracing_on", "0"), ("buffer_size_kb", "65536"), ("saved_cmdlines_size", "32768")]
    changes += [(f"events/{e}/filter", LOOP_FILTER) for e in events if e.startswith("ext4/")]
    changes += [(f"events/{e}/enable", "1") for e in events]
    restore = [(path, saved(path)) for path, _ in changes]
    try:
        write("trace", "")
        for path, value in changes:
            write(path, value)
        before = lost()
        with open(out, "wb") as sink:
            reader = subprocess.Popen(["cat", os.path.join(TRACEFS, "trace_pipe")],
                                      stdout=sink)
            write("tracing_on", "1")
            try:
                code = subprocess.run(cmd).returncode
            finally:
                write("tracing_on", "0")
                reader.terminate()
                reader.wait()
        # Events the reader did not keep up with are gone: a comparison must say so.
        missing = lost() - before
    finally:
        for path, value in reversed(restore):
            write(path, value)
    with open(out, "a") as sink:
        sink.write(f"{LOST_MARK}{missing}\n")
    print(f"alloc-trace: {' '.join(cmd)} exited {code}; trace in {out}"
          f"{f', {missing} events lost' if missing else ''}", file=sys.stderr)
    return code


def lost():
    """Events the ring buffers overwrote or dropped so far, over all CPUs."""
    n = 0
    cpus = os.path.join(TRACEFS, "per_cpu")
    for cpu in os.listdir(cpus):
        with open(os.path.join(cpus, cpu, "stats")) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("overrun", "dropped events"):
                    n += int(value.strip() or 0)
    return n


def parse(path):
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                comm, pid, cpu, ts, event, rest = m.groups()
                yield comm, pid, cpu, float(ts), event, rest


def field(rest, name):
    m = re.search(rf"\b{name} (\S+)", rest)
    return m.group(1) if m else None


def compare(path):
    events = collections.defaultdict(list)  # pid -> [(ts, event, rest)]
    allocs = collections.defaultdict(list)  # pid -> [key]
    cpus = collections.defaultdict(set)
    devs = {}
    open_commits = collections.defaultdict(set)
    sync_dev = {}
    early = syncs = 0
    with open(path, errors="replace") as f:
        marks = [line[len(LOST_MARK):].strip() for line in f if line.startswith(LOST_MARK)]
    if marks and marks[-1] != "0":
        print(f"WARNING: {marks[-1]} events were lost while tracing: sequences may differ "
              "only because events are missing")
    for comm, pid, cpu, ts, event, rest in parse(path):
        if event == "jbd2_start_commit":
            open_commits[field(rest, "dev")].add(field(rest, "transaction"))
            continue
        if event == "jbd2_end_commit":
            open_commits[field(rest, "dev")].discard(field(rest, "transaction"))
            continue
        if event == "ext4_sync_fs":
            sync_dev[pid] = field(rest, "dev")
        if event == "sys_syncfs" and rest.startswith("->") and pid in sync_dev:
            syncs += 1
            if open_commits[sync_dev[pid]]:
                early += 1
        events[pid].append((ts, event, rest))
        if event == "ext4_allocate_blocks":
            allocs[pid].append(re.sub(r" goal \d+", "", rest.split(" ", 2)[2]))
            cpus[pid].add(cpu)
            devs[pid] = field(rest, "dev")
    appliers = sorted(allocs, key=lambda p: events[p][0][0])
    if not appliers:
        print("no allocations on loop devices in this trace")
        return 1
    # Builds of other images (other tests, run alongside) differ from their first
    # allocations: compare only the appliers that began as most did.
    starts = collections.Counter(tuple(allocs[p][:PREFIX]) for p in appliers)
    common = starts.most_common(1)[0][0]
    others = [p for p in appliers if tuple(allocs[p][:PREFIX]) != common]
    if others:
        print(f"left out, as builds of other images (their first {PREFIX} allocations "
              f"differ from most): {' '.join(others)}")
    appliers = [p for p in appliers if p not in others]
    groups = collections.defaultdict(list)
    for p in appliers:
        groups[tuple(allocs[p])].append(p)
    for p in appliers:
        frees = sum(1 for _, e, _ in events[p] if e == "ext4_free_blocks")
        print(f"applier {p}: dev {devs[p]}, cpus {sorted(cpus[p])}, "
              f"{len(allocs[p])} allocations, {frees} frees by it")
    print(f"{len(appliers)} appliers, {len(groups)} distinct allocation sequences: "
          + ", ".join(f"{len(v)} ({' '.join(v)})" for v in groups.values()))
    print(f"{early} of {syncs} syncfs calls returned while their device's commit was running")
    if len(groups) > 1:
        ref = max(groups.values(), key=len)[0]
        for seq, pids in groups.items():
            if ref in pids:
                continue
            p = pids[0]
            i = next((i for i, (a, b) in enumerate(zip(allocs[ref], seq)) if a != b),
                     min(len(seq), len(allocs[ref])))
            print(f"\napplier {p} first differs from {ref} at allocation {i}:")
            print(f"  {p}: {seq[i] if i < len(seq) else '(none)'}")
            print(f"  {ref}: {allocs[ref][i] if i < len(allocs[ref]) else '(none)'}")
            n = -1
            for k, (ts, e, rest) in enumerate(events[p]):
                n += e == "ext4_allocate_blocks"
                if n == i:
                    print("  its events just before:")
                    for ts2, e2, r2 in events[p][max(0, k - 8):k + 1]:
                        print(f"    {ts2:.6f} {e2} {r2}")
                    break
    return 0 if len(groups) == 1 else 6


def main(argv):
    if len(argv) >= 4 and argv[1] == "record" and argv[3] == "--":
        return record(argv[2], argv[4:])
    if len(argv) == 3 and argv[1] == "compare":
        return compare(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

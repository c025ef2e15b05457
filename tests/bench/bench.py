#!/usr/bin/env python3
"""`make bench`: rootbox against its predecessor, a VM-isolated peer and this machine's limit.

For each input, every contender runs once as a warm-up, then BENCH_RUNS times, contenders
alternating run by run (the order rotates each round). Between runs, outside the timing, the
outputs and staging trees are removed and `sync` flushes dirty pages, so no run pays for the
previous one's writeback. Prints a table per input, rootbox's time by phase, and writes
build/bench/results.json (every run, raw) and build/bench/bench.png. See tests/bench/README.md.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, HERE)
import inputs  # noqa: E402
import proctrace  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.abspath(os.environ.get("BENCH_OUT", os.path.join(ROOT, "build", "bench")))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
INPUTS = [s for s in os.environ.get("BENCH_INPUTS", ",".join(inputs.NAMES)).split(",") if s]
ONLY = [s for s in os.environ.get("BENCH_CONTENDERS", "").split(",") if s]
# Contenders in an emulated VM (QEMU TCG: no usable KVM) are 10-25x slower: by default they
# run once, with no warm-up, on debian and small20k only (one run takes 2.5-3.5 min each on
# small200k and large under TCG here).
TCG_RUNS = int(os.environ.get("BENCH_TCG_RUNS", "1"))
TCG_INPUTS = [s for s in os.environ.get("BENCH_TCG_INPUTS", "debian,small20k").split(",")
              if s]
VM_ACCEL = os.environ.get("BENCH_VM_ACCEL", "tcg")
ROOTBOX = os.environ.get("ROOTBOX", os.path.join(ROOT, "target", "release", "rootbox"))
WORKER_IMAGE = os.environ.get("ROOTBOX_WORKER_IMAGE", os.path.join(ROOT, "build", "worker-image"))
FIXTURE = os.environ.get("BENCH_DEBIAN_TAR",
                         os.path.join(ROOT, "build", "fixtures", "debian-bookworm-minbase.tar"))
NOBODY = 65534
MIB = 1 << 20
WORK = os.path.join(OUT, "work")
TMPFS = os.path.join(WORK, "tmpfs")


def log(msg):
    print(f"bench: {msg}", flush=True)


def sh(*argv, **kw):
    return subprocess.run(argv, check=True, **kw)


# --- contenders ------------------------------------------------------------------------------

class Contender:
    name = "?"  # as printed; `ident` is what BENCH_CONTENDERS matches
    ident = "?"
    emulated = False  # runs in a TCG-emulated VM: BENCH_TCG_RUNS / BENCH_TCG_INPUTS apply
    worker_kind = None  # how the table names the worker column's process, None: no worker

    def available(self):
        """None when it can run, else why not."""
        return None

    def prepare(self, inp, d):
        """argv and env for one run in the empty directory d (not timed)."""
        raise NotImplementedError

    def output(self, d):
        return os.path.join(d, "out.ext4")

    def split(self, res):
        """(host records, worker records) of a traced run."""
        return res["procs"], []


class Rootbox(Contender):
    worker_kind = "sandbox"

    def __init__(self, isolation, vmm=None, accel=None):
        self.isolation = isolation
        self.name = "rootbox" if isolation == "container" else f"rootbox-vm ({vmm}+{accel})"
        self.ident = "rootbox" if isolation == "container" else "rootbox-vm"
        self.emulated = accel == "tcg"

    def prepare(self, inp, d):
        return [ROOTBOX, "pull", inp["source"], "-o", self.output(d), "--isolation",
                self.isolation, "--json", "--worker-image", WORKER_IMAGE], None

    def split(self, res):
        top = res["top_pid"]
        return ([r for r in res["procs"] if r["pid"] == top],
                proctrace.descendants(res, top))


class Predecessor(Contender):
    name = ident = "predecessor"

    def prepare(self, inp, d):
        # Staging on tmpfs, as for the limit: the predecessor's most favourable setting.
        work = os.path.join(TMPFS, "predecessor")
        os.mkdir(work)
        os.chown(work, NOBODY, NOBODY)
        os.chown(d, NOBODY, NOBODY)
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                os.path.join(HERE, "predecessor.sh"), self.output(d), str(inp["size"]),
                work, *inp["layers"]]
        env = dict(os.environ, HOME="/nonexistent",
                   PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        return argv, env


class VirtMakeFs(Contender):
    name = "virt-make-fs"
    worker_kind = "qemu"

    def __init__(self, accel):
        self.accel = accel
        self.emulated = accel == "tcg"
        self.name = f"virt-make-fs ({accel})"
        self.ident = "virt-make-fs"

    def available(self):
        if not shutil.which("virt-make-fs"):
            return "virt-make-fs is not installed (apt-get install libguestfs-tools)"
        return None

    def prepare(self, inp, d):
        if len(inp["layers"]) != 1:
            raise SystemExit("bench: virt-make-fs gets the flattened tar: one-layer inputs only")
        env = dict(os.environ)
        if self.accel == "tcg":
            env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
        # The one layer is the flattened tar. virt-make-fs has no inode-ratio option and
        # writes runs of zeros as data, so it gets a size its default geometry fits in.
        return ["virt-make-fs", "--format=raw", "--type=ext4", "--label=rootfs",
                f"--size={inp['vmf_size']}", inp["layers"][0], self.output(d)], env

    def split(self, res):
        q = [r for r in res["procs"] if os.path.basename(r["exe"]).startswith("qemu-system")]
        return [r for r in res["procs"] if r not in q], q


class LimitDecompress(Contender):
    name = ident = "limit:decompress"

    def prepare(self, inp, d):
        return [os.path.join(HERE, "limit.sh"), "decompress", *inp["layers"]], None

    def output(self, d):
        return None


class LimitTree(Contender):
    name = ident = "limit:tmpfs+mkfs-d"

    def prepare(self, inp, d):
        tree = os.path.join(TMPFS, "tree")
        os.mkdir(tree)
        return [os.path.join(HERE, "limit.sh"), "tree", self.output(d), str(inp["size"]), tree,
                *inp["layers"]], None


def doctor():
    try:
        out = subprocess.run([ROOTBOX, "doctor", "--json", "--worker-image", WORKER_IMAGE],
                             capture_output=True, text=True, timeout=300)
        return json.loads(out.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return {"error": str(e)}


def contenders(doc):
    """The contender list, and lines saying what was skipped and why."""
    notes = []
    vm = next((s for s in doc.get("sandboxes", []) if s.get("name") == "vm"), None)
    usable = bool(vm and vm.get("usable"))
    accel = (vm.get("accel") if usable else None) or VM_ACCEL
    out = [Rootbox("container")]
    if usable:
        out.append(Rootbox("vm", vm.get("vmm") or "?", accel))
    else:
        why = (vm or {}).get("why_not") or doc.get("error") or "rootbox doctor lists no vm sandbox"
        notes.append(f"rootbox --isolation vm skipped: doctor says it is not usable: {why}")
    out += [Predecessor(), LimitDecompress(), LimitTree(), VirtMakeFs(accel)]
    if ONLY:
        out = [c for c in out if any(c.ident == o or c.ident.startswith(o + ":") for o in ONLY)]
    kept = []
    for c in out:
        why = c.available()
        if why:
            notes.append(f"{c.name} skipped: {why}")
        else:
            kept.append(c)
    return kept, notes, accel


# --- running ---------------------------------------------------------------------------------

def clean_dir(d):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)


def clean_tmpfs():
    for n in os.listdir(TMPFS):
        p = os.path.join(TMPFS, n)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)


def cpu_busy(secs=2.0):
    """Fraction of all CPUs' time spent busy over the next `secs` (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(secs)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def fsck(path):
    r = subprocess.run(["e2fsck", "-fn", path], capture_output=True, text=True)
    last = [ln for ln in r.stdout.splitlines() if ln.strip()][-1:] or [""]
    return {"clean": r.returncode == 0, "summary": last[0].strip()}


def run_once(c, inp, idx, warm):
    d = os.path.join(WORK, "run")
    clean_dir(d)
    clean_tmpfs()
    argv, env = c.prepare(inp, d)
    stdout_path = os.path.join(WORK, "stdout")
    stderr_path = os.path.join(WORK, "stderr")
    with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
        res = proctrace.run(argv, env=env, cwd=d, stdout=so, stderr=se, timeout=3600)
    with open(stdout_path, errors="replace") as f:
        stdout = f.read()
    with open(stderr_path, errors="replace") as f:
        stderr = f.read()
    host, worker = c.split(res)
    top_host = max(host, key=lambda r: r["hwm_kb"], default=None)
    top_worker = max(worker, key=lambda r: r["hwm_kb"], default=None)
    rec = {
        "input": inp["name"], "contender": c.name, "run": idx, "warmup": warm,
        "loadavg_1m": os.getloadavg()[0],
        "wall_s": round(res["wall_s"], 4), "rc": res["rc"],
        "user_s": res["user_s"], "sys_s": res["sys_s"],
        "host_rss_kb": top_host and top_host["hwm_kb"],
        "host_proc": top_host and top_host["name"],
        "worker_rss_kb": top_worker and top_worker["hwm_kb"] if c.worker_kind else None,
        "worker_proc": top_worker and top_worker["name"] if c.worker_kind else None,
        "tree_maxrss_kb": res["tree_maxrss_kb"],
        "procs": sorted(res["procs"], key=lambda r: -r["hwm_kb"]),
        "stderr_tail": stderr[-2000:],
    }
    if isinstance(c, Rootbox):
        try:
            rec["report"] = json.loads(stdout)
        except ValueError:
            rec["report"] = None
    out = c.output(d)
    if res["rc"] == 0 and out:
        if not os.path.exists(out):
            rec["rc"] = "no output"
        else:
            rec["output_bytes"] = os.path.getsize(out)
            if warm:
                rec["fsck"] = fsck(out)
    shutil.rmtree(d)
    clean_tmpfs()
    sh("sync")
    ok = "ok" if rec["rc"] == 0 else f"FAILED rc={rec['rc']}: {stderr.strip()[-300:]}"
    if rec.get("fsck") and not rec["fsck"]["clean"]:
        ok += f" (but e2fsck -fn is not clean: {rec['fsck']['summary']})"
    label = "warm-up" if warm else f"run {idx}"
    log(f"  {inp['name']:9} {c.name:20} {label:8} {rec['wall_s']:8.2f} s  {ok}")
    return rec


def size_for(inp, rb_report):
    """The output size non-rootbox contenders get: rootbox's own result when it ran (so all
    build the same geometry; they are spared its shrink), else 1.3 x content + 64 MiB."""
    if rb_report and rb_report.get("size_bytes"):
        return rb_report["size_bytes"]
    return (int(inp["uncompressed_bytes"] * 1.3) + 64 * MIB) // MIB * MIB


def vmf_size(inp, size):
    # Default ext4 geometry there: one inode per 16 KiB; zero runs are written as data.
    need = max(size, int(inp["uncompressed_bytes"] * 1.2) + 64 * MIB,
               int(inp["entries"] * 16384 * 1.2) + 64 * MIB)
    return f"{need // MIB + 1}M"


def planned_runs(c, inp):
    """Timed runs of contender c on input inp, and whether it has a warm-up."""
    if not c.emulated:
        return RUNS, True
    if inp["name"] not in TCG_INPUTS and "all" not in TCG_INPUTS:
        return 0, False
    return min(TCG_RUNS, RUNS) if RUNS else 0, False


def bench_input(inp, cs):
    runs = []
    log(f"input {inp['name']}: {inp['entries']} entries, "
        f"{inp['uncompressed_bytes'] / MIB:.0f} MiB uncompressed, "
        f"{inp['compressed_bytes'] / MIB:.0f} MiB gzip")
    inp["size"] = size_for(inp, None)
    inp["vmf_size"] = vmf_size(inp, inp["size"])
    planned = {c.name: planned_runs(c, inp)[0] for c in cs}
    for c in cs:  # warm-ups, rootbox first: its output size is the others' target size
        if not planned_runs(c, inp)[1]:
            continue
        r = run_once(c, inp, 0, True)
        runs.append(r)
        if c.name == "rootbox" and r["rc"] == 0:
            inp["size"] = size_for(inp, r.get("report"))
            inp["vmf_size"] = vmf_size(inp, inp["size"])
    for i in range(1, RUNS + 1):
        k = (i - 1) % len(cs)
        for c in cs[k:] + cs[:k]:
            if i <= planned[c.name]:
                runs.append(run_once(c, inp, i, False))
    return runs, planned


# --- reporting -------------------------------------------------------------------------------

def mib(kb):
    return "-" if kb is None else f"{kb / 1024:.0f}"


def summarize(inp_name, cs, runs, planned):
    rows = []
    for c in cs:
        rs = [r for r in runs if r["contender"] == c.name and not r["warmup"]]
        ok = [r for r in rs if r["rc"] == 0]
        if not ok:
            rows.append({"contender": c.name, "n": 0, "failed": len(rs),
                         "skipped": planned.get(c.name) == 0})
            continue
        w = [r["wall_s"] for r in ok]
        rows.append({
            "contender": c.name, "n": len(ok), "failed": len(rs) - len(ok),
            "median_s": statistics.median(w), "min_s": min(w), "max_s": max(w),
            "cpu_s": statistics.median([(r["user_s"] or 0) + (r["sys_s"] or 0) for r in ok]),
            "host_rss_kb": max(r["host_rss_kb"] or 0 for r in ok),
            "host_proc": max(ok, key=lambda r: r["host_rss_kb"] or 0)["host_proc"],
            "worker_rss_kb": (max(r["worker_rss_kb"] or 0 for r in ok)
                              if c.worker_kind else None),
            "worker_proc": (max(ok, key=lambda r: r["worker_rss_kb"] or 0)["worker_proc"]
                            if c.worker_kind else None),
            "reduced": c.emulated,
        })
    base = next((r for r in rows if r["contender"] == "rootbox" and r["n"]), None)
    for r in rows:
        if r["n"] and base:
            r["ratio"] = r["median_s"] / base["median_s"]
    return rows


def print_table(inp, rows):
    print()
    print(f"== {inp['name']}: {inp['entries']} entries, {inp['uncompressed_bytes'] / MIB:.0f} MiB "
          f"uncompressed, {inp['compressed_bytes'] / MIB:.0f} MiB gzip, output size "
          f"{inp['size'] / MIB:.0f} MiB ==")
    hdr = (f"{'contender':28} {'n':>3} {'median s':>9} {'min s':>8} {'max s':>8} {'x rootbox':>9} "
           f"{'cpu s':>7} {'host RSS MiB':>18} {'worker RSS MiB':>22}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r.get("skipped"):
            print(f"{r['contender']:28} {0:>3}   not run on this input (BENCH_TCG_INPUTS)")
            continue
        if not r["n"]:
            print(f"{r['contender']:28} {0:>3}   all {r['failed']} run(s) failed")
            continue
        n = f"{r['n']}{'*' if r['reduced'] else ''}"
        host = f"{mib(r['host_rss_kb'])} ({r['host_proc']})"
        worker = "-" if r["worker_rss_kb"] is None else \
            f"{mib(r['worker_rss_kb'])} ({r['worker_proc']})"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        print(f"{r['contender']:28} {n:>3} {r['median_s']:9.2f} {r['min_s']:8.2f} "
              f"{r['max_s']:8.2f} {ratio:>9} {r['cpu_s']:7.1f} {host:>18} {worker:>22}")
    for line in target_ratios(rows):
        print(line)


def target_ratios(rows):
    """The ratios the performance targets are stated in: rootbox (container) against the
    unsafe naive pipeline, and rootbox's microVM against virt-make-fs (same accelerator)."""
    med = {r["contender"]: r["median_s"] for r in rows if r.get("n")}
    out = []
    naive = med.get("limit:tmpfs+mkfs-d")
    if naive and "rootbox" in med:
        out.append(f"rootbox / naive (limit:tmpfs+mkfs-d) = {med['rootbox'] / naive:.2f}")
    vm = next((k for k in med if k.startswith("rootbox-vm")), None)
    vmf = next((k for k in med if k.startswith("virt-make-fs")), None)
    if vm and vmf:
        out.append(f"{vm} / {vmf} = {med[vm] / med[vmf]:.2f}")
    return out


def phases(inp_name, runs):
    """rootbox's time by phase (medians over its timed runs), from its --json timings."""
    out = {}
    for name in sorted({r["contender"] for r in runs if r["contender"].startswith("rootbox")}):
        reps = [r["report"] for r in runs if r["contender"] == name and not r["warmup"]
                and r["rc"] == 0 and r.get("report")]
        if not reps:
            continue
        keys = sorted({k for rep in reps for k in rep["timings_ms"]["worker"]})
        per = {"verify": [], "boot": []}
        def label(k):
            # The worker times its unmount (the writeback of everything applied) as shrink.
            return "shrink (umount + resize2fs)" if k == "shrink" else k

        for k in keys:
            per[label(k)] = []
        per["sandbox start/stop + protocol"] = []
        per["resolve + hash/fsync/rename output"] = []
        per["total"] = []
        for rep in reps:
            t = rep["timings_ms"]
            w = t["worker"]
            boot = t.get("boot") or 0
            per["verify"].append(t["verify"])
            per["boot"].append(boot)
            for k in keys:
                per[label(k)].append(w.get(k, 0))
            per["sandbox start/stop + protocol"].append(
                t["sandbox_and_job"] - sum(w.values()) - boot)
            per["resolve + hash/fsync/rename output"].append(
                t["total"] - t["verify"] - t["sandbox_and_job"])
            per["total"].append(t["total"])
        if not any(per["boot"]):
            del per["boot"]
        # The worker's helper processes, from the trace: how many and how long (medians).
        tools = {}
        for r in runs:
            if r["contender"] != name or r["warmup"] or r["rc"] != 0:
                continue
            per_run = {}
            for p in r["procs"]:
                if p["name"] in ("mke2fs", "e2fsck", "resize2fs") and p["t1"] is not None:
                    n, t = per_run.get(p["name"], (0, 0.0))
                    per_run[p["name"]] = (n + 1, t + p["t1"] - p["t0"])
            for k, v in per_run.items():
                tools.setdefault(k, []).append(v)
        out[name] = {
            "tools": {k: {"count": statistics.median(n for n, _ in v),
                          "seconds": statistics.median(t for _, t in v)}
                      for k, v in tools.items()},
            "phases_ms": {k: statistics.median(v) for k, v in per.items()},
            "bytes_shipped": reps[0]["uncompressed_bytes"],
            "size_bytes": reps[0]["size_bytes"],
            "used_bytes": reps[0]["used_bytes"],
            "isolation": reps[0].get("isolation"),
            "accel": reps[0].get("accel"),
        }
    for name, p in out.items():
        total = p["phases_ms"]["total"] or 1
        parts = ", ".join(f"{k} {v / 1000:.2f} s ({100 * v / total:.0f}%)"
                          for k, v in p["phases_ms"].items() if k != "total")
        print(f"{name} by phase (median, its own --json timings, total "
              f"{total / 1000:.2f} s): {parts}")
        print(f"{name}: {p['bytes_shipped']} bytes shipped into the sandbox "
              f"({p['bytes_shipped'] / MIB:.0f} MiB), image {p['size_bytes'] / MIB:.0f} MiB, "
              f"{p['used_bytes'] / MIB:.0f} MiB used")
        if p["tools"]:
            print(f"{name}: e2fsprogs runs per build (median, traced): " + ", ".join(
                f"{k} x{v['count']:g} {v['seconds']:.2f} s" for k, v in sorted(p["tools"].items())))
    return out


FOOTNOTE = """\
n: timed runs after one warm-up; * = a contender in a TCG-emulated VM (10-25x slower here):
   BENCH_TCG_RUNS={tcg_runs} run(s) without a warm-up (inputs and appliance are cached by then),
   on BENCH_TCG_INPUTS={tcg_inputs} only (one run on small200k or large takes 2.5-3.5 min each);
   BENCH_TCG_RUNS=5 BENCH_TCG_INPUTS=all runs them like the others.
wall time: from fork to exit of the contender's top process; every contender ends with its
   output fsync'ed (rootbox also hashes it). Non-rootbox outputs get rootbox's output size.
cpu s: user+sys of the whole process tree (wait4 rusage), median.
RSS: peak resident set (VmHWM) of every process, read by a ptrace tracer (tests/bench/proctrace.py)
   at each process's exit stop, so short-lived children (mke2fs, e2fsck, resize2fs, the
   applier, QEMU) are measured exactly. host = the largest process outside the sandbox (for
   rootbox: the rootbox CLI itself); worker = the largest process inside the sandbox: for
   rootbox every descendant of the CLI (worker PID 1, applier, e2fsprogs; QEMU and the vsock
   daemon for vm), for virt-make-fs the qemu-system process. Page cache is not counted.
ratio: median / median of rootbox (container)."""


def chart(results, path):
    if not shutil.which("gnuplot"):
        log("gnuplot missing: no chart")
        return
    names = []
    for res in results:
        for row in res["rows"]:
            if row["contender"] not in names:
                names.append(row["contender"])
    dat = path + ".dat"
    with open(dat, "w") as f:
        for res in results:
            cols = [res["input"]]
            by = {r["contender"]: r for r in res["rows"]}
            for n in names:
                r = by.get(n)
                if r and r["n"]:
                    cols += [f"{r['median_s']:.4f}", f"{r['min_s']:.4f}", f"{r['max_s']:.4f}"]
                else:
                    cols += ["NaN", "NaN", "NaN"]
            f.write(" ".join(cols) + "\n")
    plots = ", ".join(
        f"'{dat}' using {2 + 3 * i}:{3 + 3 * i}:{4 + 3 * i}:xtic(1) title '{n}'"
        for i, n in enumerate(names))
    script = f"""
set terminal pngcairo size 1200,650 noenhanced font ',10'
set output '{path}'
set title 'rootbox make bench: wall time per input (median, min-max bars; log scale)'
set ylabel 'seconds'
set logscale y
set grid ytics
set key outside right top
set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0.02:*]
plot {plots}
"""
    r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if r.returncode != 0:
        log(f"gnuplot failed: {r.stderr.strip()[-500:]}")


def main():
    t0 = time.monotonic()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (rootbox's container sandbox, setpriv, tmpfs)")
    os.makedirs(os.path.join(OUT, "inputs"), exist_ok=True)
    os.makedirs(WORK, exist_ok=True)
    inps = [inputs.ensure(n, os.path.join(OUT, "inputs"), FIXTURE) for n in INPUTS]
    for i in inps:  # the predecessor reads the layers as nobody
        for p in [os.path.dirname(i["layers"][0])] + i["layers"]:
            while p.startswith(OUT) and p != OUT:
                os.chmod(p, os.stat(p).st_mode | 0o005 | (0o010 if os.path.isdir(p) else 0))
                p = os.path.dirname(p)
    load = os.getloadavg()
    busy = cpu_busy()
    if busy > 0.2:
        log(f"warning: the CPUs are {100 * busy:.0f}% busy before starting: something else is "
            "running and the timings will show it")
    doc = doctor()
    cs, notes, accel = contenders(doc)
    for n in notes:
        log(n)
    log(f"contenders: {', '.join(c.name for c in cs)}; runs: {RUNS} after a warm-up; "
        f"inputs: {', '.join(INPUTS)}; VM accelerator for virt-make-fs: {accel}")
    vmf = next((c for c in cs if isinstance(c, VirtMakeFs)), None)
    if vmf:  # libguestfs builds its appliance on first use: do that outside any timing
        t = time.monotonic()
        env = dict(os.environ, LIBGUESTFS_BACKEND_SETTINGS="force_tcg") \
            if vmf.accel == "tcg" else None
        subprocess.run(["guestfish", "-a", "/dev/null", "run"], env=env, check=False,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        log(f"libguestfs appliance ready ({time.monotonic() - t:.0f} s, not timed)")
    os.makedirs(TMPFS, exist_ok=True)
    mounted = False
    if not os.path.ismount(TMPFS):
        sh("mount", "-t", "tmpfs", "-o", "size=50%,mode=0755", "bench-tmpfs", TMPFS)
        mounted = True
    results, all_runs = [], []
    try:
        for inp in inps:
            runs, planned = bench_input(inp, cs)
            all_runs += runs
            rows = summarize(inp["name"], cs, runs, planned)
            results.append({"input": inp["name"], "entries": inp["entries"],
                            "uncompressed_bytes": inp["uncompressed_bytes"],
                            "compressed_bytes": inp["compressed_bytes"],
                            "output_size": inp["size"], "vmf_size": inp.get("vmf_size"),
                            "planned_runs": planned, "rows": rows})
    finally:
        if mounted:
            subprocess.run(["umount", TMPFS])
    print()
    print(f"rootbox bench: {os.cpu_count()} CPUs, kernel {os.uname().release}; {RUNS} runs per "
          f"contender after a warm-up; load average {load[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    for n in notes:
        print(f"note: {n}")
    for res, inp in zip(results, inps):
        print_table(inp, res["rows"])
        res["target_ratios"] = target_ratios(res["rows"])
        res["rootbox_phases"] = phases(inp["name"], [r for r in all_runs
                                                     if r["input"] == inp["name"]])
    print()
    print(FOOTNOTE.format(tcg_runs=TCG_RUNS, tcg_inputs=",".join(TCG_INPUTS)))
    elapsed = time.monotonic() - t0
    stamp = time.strftime("%Y%m%dT%H%M%S")
    doc_out = {
        "started": stamp, "duration_s": round(elapsed, 1), "runs": RUNS,
        "loadavg_before": load, "loadavg_after": os.getloadavg(), "cpu_busy_before": busy,
        "tcg_runs": TCG_RUNS, "tcg_inputs": TCG_INPUTS, "inputs": INPUTS,
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "doctor": doc, "notes": notes, "virt_make_fs_accel": accel,
        "results": results, "raw_runs": all_runs,
    }
    path = os.path.join(OUT, f"results-{stamp}.json")
    with open(path, "w") as f:
        json.dump(doc_out, f, indent=1)
    link = os.path.join(OUT, "results.json")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.basename(path), link)
    chart(results, os.path.join(OUT, "bench.png"))
    print(f"raw runs: {path}; chart: {os.path.join(OUT, 'bench.png')}")
    print(f"bench: total duration {elapsed / 60:.1f} min")
    failed = [r for r in all_runs if r["rc"] != 0]
    if failed:
        sys.exit(f"bench: {len(failed)} run(s) failed (see raw runs)")


if __name__ == "__main__":
    main()

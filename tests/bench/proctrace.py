"""Run a command and measure the peak RSS of every process it starts, exactly.

The command runs under ptrace with only fork/vfork/clone/exec/exit events enabled (no syscall
stops, so the cost is a few context switches per process). At each task's PTRACE_EVENT_EXIT
stop its memory is still mapped, and /proc/TID/status `VmHWM` is the kernel's own high-water
mark of that process's resident set: read there it is the true peak, however short-lived the
process (mke2fs, e2fsck, the layer applier, QEMU). A process that execs gets a new record
(the high-water mark restarts with the new image). wait4's ru_maxrss of the top process (the
largest peak in the whole tree that was reaped, including the runner's own pre-exec fork of
the Python process, ~10 MiB) is kept as a cross-check.

Works in any cgroup setup (this machine's memory controller is on a cgroup v1 hierarchy that
belongs to the session, not to the bench).
"""

import ctypes
import os
import signal
import subprocess
import time

PTRACE_TRACEME = 0
PTRACE_CONT = 7
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
O_TRACEFORK, O_TRACEVFORK, O_TRACECLONE, O_TRACEEXEC, O_TRACEEXIT = 0x2, 0x4, 0x8, 0x10, 0x40
O_EXITKILL = 0x100000
EV_FORK, EV_VFORK, EV_CLONE, EV_EXEC, EV_EXIT = 1, 2, 3, 4, 6
WALL = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def _ptrace(req, pid, addr=0, data=0):
    r = _libc.ptrace(req, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if r == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"ptrace({req}, {pid}): {os.strerror(e)}")
    return r


def _cont(pid, sig=0):
    try:
        _ptrace(PTRACE_CONT, pid, 0, sig)
    except OSError:
        pass  # the task died meanwhile (SIGKILL): its exit shows up in wait


def _status(tid):
    """(Tgid, Name, VmHWM kB) of a task, or None once it is gone."""
    try:
        with open(f"/proc/{tid}/status") as f:
            text = f.read()
    except OSError:
        return None
    tgid, name, hwm = tid, "?", 0
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k == "Tgid":
            tgid = int(v)
        elif k == "Name":
            name = v.strip()
        elif k == "VmHWM":
            hwm = int(v.split()[0])
    return tgid, name, hwm


def _traceme():
    _ptrace(PTRACE_TRACEME, 0)


def run(argv, env=None, cwd=None, stdout=None, stderr=None, timeout=None):
    """Runs argv to completion. Returns a dict: wall_s, rc (negative: signal), procs (one per
    process image: pid, parent pid, name, exe, hwm_kb, t0/t1 = seconds from the start to its
    exec and to its last task's exit), top_pid, tree_maxrss_kb, user_s, sys_s.
    """
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout,
                         stderr=stderr, preexec_fn=_traceme)
    top = p.pid
    # After exec the child stops with SIGTRAP (TRACEME without TRACEEXEC yet).
    _, st = os.waitpid(top, WALL)
    if not os.WIFSTOPPED(st):
        raise RuntimeError(f"{argv[0]}: did not stop after exec ({st:#x})")
    _ptrace(PTRACE_SETOPTIONS, top, 0, O_TRACEFORK | O_TRACEVFORK | O_TRACECLONE | O_TRACEEXEC
            | O_TRACEEXIT | O_EXITKILL)
    images = {}      # tgid -> current record
    done = []        # finished records
    parent = {top: os.getpid()}
    started = {top}  # tasks whose initial attach-stop has been consumed
    alive = {top}
    exe = {}

    def record(tgid):
        r = images.get(tgid)
        if r is None:
            try:
                path = os.readlink(f"/proc/{tgid}/exe")
            except OSError:
                path = exe.get(tgid, "?")
            r = images[tgid] = {"pid": tgid, "ppid": parent.get(tgid), "name": "?",
                                "exe": path, "hwm_kb": 0,
                                "t0": round(time.monotonic() - t0, 4), "t1": None}
        return r

    record(top)
    _cont(top)
    rc = None
    rusage = None
    deadline = None if timeout is None else t0 + timeout
    while alive:
        if deadline is not None and time.monotonic() > deadline:
            os.kill(top, signal.SIGKILL)
            deadline = None
        try:
            pid, st, ru = os.wait4(-1, WALL)
        except ChildProcessError:
            # Every traced task is gone; `alive` named one whose exit was never reported to
            # us (a thread whose tid an exec in another thread took over, or a task that died
            # between its clone event and its first stop).
            if rc is None:
                raise RuntimeError(f"{argv[0]}: its tasks vanished before it exited")
            break
        if os.WIFEXITED(st) or os.WIFSIGNALED(st):
            alive.discard(pid)
            if pid == top:
                rc = os.WEXITSTATUS(st) if os.WIFEXITED(st) else -os.WTERMSIG(st)
                rusage = ru
                wall = time.monotonic() - t0
            r = images.pop(pid, None)
            if r is not None:
                done.append(r)
            continue
        if not os.WIFSTOPPED(st):
            continue
        sig = os.WSTOPSIG(st)
        event = st >> 16
        if pid not in started:
            started.add(pid)
            alive.add(pid)
            if sig == signal.SIGSTOP and event == 0:
                _cont(pid)
                continue
        if sig == signal.SIGTRAP and event in (EV_FORK, EV_VFORK, EV_CLONE):
            new = ctypes.c_ulong()
            _libc.ptrace(PTRACE_GETEVENTMSG, pid, None, ctypes.byref(new))
            child = new.value
            alive.add(child)
            s = _status(pid)
            ptgid = s[0] if s else pid
            if event != EV_CLONE or (_status(child) or (None,))[0] == child:
                parent[child] = ptgid  # a new process (not a thread of pid's)
            _cont(pid)
        elif sig == signal.SIGTRAP and event == EV_EXEC:
            s = _status(pid)
            tgid = s[0] if s else pid
            old = images.pop(tgid, None)
            if old is not None:
                done.append(old)
            r = record(tgid)
            if s:
                r["name"] = s[1]
            _cont(pid)
        elif sig == signal.SIGTRAP and event == EV_EXIT:
            s = _status(pid)
            if s:
                r = record(s[0])
                r["hwm_kb"] = max(r["hwm_kb"], s[2])
                r["t1"] = round(time.monotonic() - t0, 4)
                if s[0] == pid or r["name"] == "?":
                    r["name"] = s[1]
            _cont(pid)
        elif event:
            _cont(pid)  # PTRACE_EVENT_STOP and the like
        else:
            _cont(pid, sig)  # a real signal: deliver it
    done.extend(images.values())
    for r in done:
        if r["ppid"] is None:  # the child's exec overtook its parent's fork event
            r["ppid"] = parent.get(r["pid"])
    return {
        "argv": list(argv),
        "wall_s": wall,
        "rc": rc,
        "top_pid": top,
        "procs": done,
        "tree_maxrss_kb": rusage.ru_maxrss if rusage else None,
        "user_s": rusage.ru_utime if rusage else None,
        "sys_s": rusage.ru_stime if rusage else None,
    }


def descendants(result, root):
    """The records of processes below pid `root` (not root itself)."""
    kids = {}
    for r in result["procs"]:
        kids.setdefault(r["ppid"], []).append(r)
    out, todo = [], [root]
    seen = set()
    while todo:
        p = todo.pop()
        for r in kids.get(p, []):
            if id(r) not in seen and r["pid"] != root:
                seen.add(id(r))
                out.append(r)
                todo.append(r["pid"])
    return out


if __name__ == "__main__":
    import json
    import sys
    res = run(sys.argv[1:], stdout=sys.stderr)
    res["procs"].sort(key=lambda r: -r["hwm_kb"])
    print(json.dumps(res, indent=1))

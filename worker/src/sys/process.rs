//! Process control the safe crates leave unsafe: fork, and PID-1 power-off.

use nix::unistd::{fork, ForkResult, Pid};

/// Forks; the child runs `child` and exits with its code, never returning.
///
/// Only call while the process is single-threaded (the worker always is).
pub fn fork_run(child: impl FnOnce() -> i32) -> nix::Result<Pid> {
    // SAFETY: the worker is single-threaded, so the child inherits no locked mutexes from
    // other threads; it runs plain Rust code then exits without returning to the caller.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let code = child();
            std::process::exit(code);
        }
    }
}

/// Pins this process (and the children it forks after) to one of the CPUs it may use, the
/// `spread`-th of them (modulo their count), and returns that CPU. ext4 keeps per-CPU
/// allocation pools and counters: a writer that moves between CPUs places blocks by where
/// it happened to run. Which CPU does not matter, only that it stays on one; `spread`
/// (the output's loop device number) sends builds running together to different CPUs.
/// Pinning where the process ran at the time put all eight appliers of the eight-build
/// test on one CPU in 3 of 8 traced runs on 2 cores.
pub fn pin_to_one_cpu(spread: usize) -> nix::Result<usize> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    let me = Pid::from_raw(0);
    let cpus = members(&sched_getaffinity(me)?);
    let cpu = *cpus.get(spread % cpus.len().max(1)).ok_or(nix::errno::Errno::EINVAL)?;
    let mut one = CpuSet::new();
    one.set(cpu)?;
    sched_setaffinity(me, &one)?;
    Ok(cpu)
}

/// The CPUs in `set`, in order.
fn members(set: &nix::sched::CpuSet) -> Vec<usize> {
    (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect()
}

/// Bounds the address space of this process (and its children).
pub fn limit_memory(bytes: u64) -> nix::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_AS, bytes, bytes)
}

/// Lets this process (and its children) hold at least `n` open files: raises the soft limit,
/// and the hard one when it is lower (which needs `CAP_SYS_RESOURCE`).
pub fn allow_open_files(n: u64) -> nix::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= n {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, n, hard.max(n))
}

/// Syncs and powers the machine off (PID 1 in a VM). Never returns.
pub fn power_off() -> ! {
    rustix::fs::sync();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    // Only reachable when reboot(2) is refused (not PID 1 of a VM).
    std::process::exit(1)
}

/// Takes ownership of descriptor `fd`, inherited from the process that started this one, if
/// it is open and not a standard stream.
pub fn adopt_inherited(fd: std::os::fd::RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    if fd < 3 {
        return None;
    }
    // SAFETY: only used to probe that `fd` is open before taking ownership below.
    rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) }).ok()?;
    // SAFETY: the host passed this descriptor for us alone; nothing else in this process
    // owns it, and it was just checked to be open.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_to_the_spread_th_allowed_cpu() {
        use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity};
        let me = Pid::from_raw(0);
        let before = sched_getaffinity(me).unwrap_or_else(|e| panic!("{e}"));
        let cpus = members(&before);
        for spread in 0..cpus.len() + 1 {
            sched_setaffinity(me, &before).unwrap_or_else(|e| panic!("{e}"));
            let cpu = pin_to_one_cpu(spread).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cpu, cpus[spread % cpus.len()], "spread {spread} of {cpus:?}");
            let now = sched_getaffinity(me).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(members(&now), [cpu]);
            assert_eq!(sched_getcpu().unwrap_or_else(|e| panic!("{e}")), cpu);
        }
        sched_setaffinity(me, &before).unwrap_or_else(|e| panic!("{e}"));
    }
}

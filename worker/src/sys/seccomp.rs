//! The layer applier's seccomp filter: an allow-list, every other system call kills the
//! process (SIGSYS, which the session reports as such). Compiled to BPF by `seccompiler`
//! (Firecracker's compiler: pure Rust, so the static worker needs no libseccomp).
//!
//! Derived from `strace -ff` of the applier during pulls of the Debian minbase image, the
//! tar conformance image and injected assets (every call after its RLIMIT_AS bound), plus
//! what its code can reach that those runs did not: xattrs on symlinks and nodes
//! (`lsetxattr`), old xattrs of a directory taking new metadata (`fremovexattr`), hash seeds
//! (`getrandom`), the allocator (`mremap`, `madvise`), and the abort after a refused
//! allocation (`rt_sigprocmask`, `rt_sigaction`, `gettid`, `getpid`, `tgkill`), so that one
//! is reported as the memory bound, not as a seccomp kill.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Every system call the applier may make after its filter is installed.
pub const APPLIER: &[(&str, i64)] = &[
    // The layer stream and the report: the socketpair/vsock, the result datagram, stderr.
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl),
    ("lseek", libc::SYS_lseek),
    // Resolving and creating entries inside the image root.
    ("openat", libc::SYS_openat),
    ("openat2", libc::SYS_openat2),
    ("open", libc::SYS_open),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("statx", libc::SYS_statx),
    ("getdents64", libc::SYS_getdents64),
    ("mkdirat", libc::SYS_mkdirat),
    ("mknodat", libc::SYS_mknodat),
    ("symlinkat", libc::SYS_symlinkat),
    ("linkat", libc::SYS_linkat),
    ("unlinkat", libc::SYS_unlinkat),
    // Committing frees at points the layers decide (apply/graveyard.rs).
    ("syncfs", libc::SYS_syncfs),
    // File content, sparse: writes at offsets and sizes set.
    ("pwrite64", libc::SYS_pwrite64),
    ("pread64", libc::SYS_pread64),
    ("ftruncate", libc::SYS_ftruncate),
    // Metadata.
    ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat),
    ("fchmod", libc::SYS_fchmod),
    ("fchmodat", libc::SYS_fchmodat),
    ("utimensat", libc::SYS_utimensat),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("flistxattr", libc::SYS_flistxattr),
    ("fremovexattr", libc::SYS_fremovexattr),
    // Memory and the runtime.
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("madvise", libc::SYS_madvise),
    ("brk", libc::SYS_brk),
    ("getrandom", libc::SYS_getrandom),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("sigaltstack", libc::SYS_sigaltstack),
    // Ending: normally, or by abort (a refused allocation).
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    ("tgkill", libc::SYS_tgkill),
];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the applier's seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("compiling the applier's seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("installing the applier's seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// The applier's filter, compiled.
pub fn applier() -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        APPLIER.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Compile)
}

/// Installs `prog` on this thread (no_new_privs is set too); irreversible.
pub fn install(prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_lists_each_call_once() {
        let prog = applier().expect("filter");
        assert!(!prog.is_empty());
        let mut nrs: Vec<i64> = APPLIER.iter().map(|&(_, n)| n).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), APPLIER.len());
    }

    #[test]
    fn a_call_outside_the_list_kills_with_sigsys_and_listed_ones_work() {
        use nix::sys::wait::{waitpid, WaitStatus};
        let prog = applier().expect("filter");
        for (call_listed, want) in [(true, 0), (false, -1)] {
            // The child only makes system calls (no allocation): safe after fork in a
            // multi-threaded test process.
            // SAFETY: see above; the child ends with _exit.
            match unsafe { nix::unistd::fork() }.expect("fork") {
                nix::unistd::ForkResult::Child => {
                    if install(&prog).is_err() {
                        // SAFETY: ends the child without running destructors.
                        unsafe { libc::_exit(2) };
                    }
                    // SAFETY: plain system calls on no memory of ours.
                    let r = unsafe {
                        if call_listed {
                            libc::syscall(libc::SYS_getpid)
                        } else {
                            libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
                        }
                    };
                    // SAFETY: as above.
                    unsafe { libc::_exit(i32::from(r < 0)) };
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let status = waitpid(child, None).expect("wait");
                    match (want, status) {
                        (0, WaitStatus::Exited(_, 0)) => {}
                        (-1, WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)) => {}
                        other => panic!("listed={call_listed}: {other:?}"),
                    }
                }
            }
        }
    }
}

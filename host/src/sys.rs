//! Every `unsafe` of the host: what runs in a child between fork and exec (which may only
//! make async-signal-safe calls), and descriptors adopted from raw system calls. The rest of
//! the host is `#![deny(unsafe_code)]`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sched::CloneFlags;

/// Makes `cmd`'s child inherit each `(fd, at)`'s `fd` as descriptor `at` (and nothing else of
/// rootbox's: every other descriptor is close-on-exec). Every `fd` must be above every `at`,
/// so no dup2 overwrites a later source.
pub fn pass_fds(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    // SAFETY: runs between fork and exec and only makes dup2 calls, which are
    // async-signal-safe, on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            for &(fd, at) in &fds {
                nix::unistd::dup2(fd, at)?;
            }
            Ok(())
        });
    }
}

/// The kernel kills `cmd`'s child with SIGKILL if the thread of rootbox that spawned it dies
/// first (kill -9 included).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: runs between fork and exec and only makes one prctl(2) call, which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
}

/// Descriptors [`enter_namespaces`] can pass (moved in the child without allocating).
const ENTER_FDS_MAX: usize = 4;

/// `cmd`'s child gets `fds` as in [`pass_fds`], whatever their numbers (each is first moved
/// above 10), dies with rootbox, and enters new namespaces (`unshare(flags)`) before exec.
pub fn enter_namespaces(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>, flags: CloneFlags) {
    assert!(fds.len() <= ENTER_FDS_MAX, "enter_namespaces passes at most {ENTER_FDS_MAX} fds");
    // SAFETY: runs between fork and exec and only makes async-signal-safe calls (fcntl,
    // dup2, prctl, unshare) on descriptors this process owns; the Vec is allocated before
    // the fork and only read here.
    unsafe {
        cmd.pre_exec(move || {
            let mut moved = [(0, 0); ENTER_FDS_MAX];
            for (i, &(fd, at)) in fds.iter().take(moved.len()).enumerate() {
                moved[i] = (nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?, at);
            }
            for &(fd, at) in moved.iter().take(fds.len()) {
                nix::unistd::dup2(fd, at)?;
            }
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            nix::sched::unshare(flags)?;
            Ok(())
        });
    }
}

/// Takes ownership of a descriptor a system call just returned (accept4, fcntl's dup).
pub fn adopt(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: callers pass a descriptor the kernel just returned to this process, which
    // nothing else owns or closes.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Starts writing `fd`'s dirty pages to its disk, without waiting for them
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: neither nix nor rustix wraps it).
pub fn start_writeback(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a system call on a descriptor the borrow keeps open; no memory is passed.
    let rc = unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `LOOP_GET_STATUS64`: the ioctl that reports a loop device's backing file.
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;

/// The device and inode numbers of the file the loop device open at `dev` is attached to,
/// `None` when it is attached to nothing (`ENXIO`).
pub fn loop_backing(dev: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<(u64, u64)>> {
    use rootbox_proto::device::LoopInfo64;
    use std::os::fd::AsRawFd;
    let mut info = LoopInfo64::with_flags(0);
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` to the pointer: `info` is that
    // layout (`repr(C)`, its 232 bytes asserted where it is defined) and outlives the call.
    let rc =
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_GET_STATUS64, &mut info as *mut LoopInfo64) };
    if rc == 0 {
        return Ok(Some((info.lo_device, info.lo_inode)));
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        e => Err(e),
    }
}

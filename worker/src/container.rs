//! The container sandbox, seen from inside: the host started us in new mount, network, IPC
//! and UTS namespaces with our children in a new PID namespace. Here we make the worker image
//! the root (read-only, private /dev and /tmp, fresh /proc), fork the worker as PID 1 of the
//! PID namespace, bound its capabilities and set no_new_privs, and exec the session.
//!
//! The privileged steps go through [`Kernel`], so their order is unit-tested with the
//! recorder (see the tests below); fork, exec and wait are the only calls made directly.

use std::convert::Infallible;
use std::ffi::CString;
use std::path::Path;

use nix::sys::wait::{waitpid, WaitStatus};
use rustix::fs::FileType;
use rustix::mount::MountFlags;

use crate::sys::kernel::{Kernel, Mount, Real};
use crate::sys::{self, SysError};

/// Device nodes the worker needs in its private /dev: (name, type, major, minor).
const NODES: &[(&str, FileType, u32, u32)] = &[
    ("null", FileType::CharacterDevice, 1, 3),
    ("zero", FileType::CharacterDevice, 1, 5),
    ("full", FileType::CharacterDevice, 1, 7),
    ("random", FileType::CharacterDevice, 1, 8),
    ("urandom", FileType::CharacterDevice, 1, 9),
    ("loop-control", FileType::CharacterDevice, 10, 237),
];

/// The session's executable inside the worker image.
const WORKER: &str = "/bin/rootbox-worker";

/// Sets up the root and runs the worker as PID 1; returns the exit code to pass on.
pub fn init(root: &Path, session_args: &[String]) -> Result<i32, SysError> {
    let k = Real;
    prepare_root(&k, root)?;

    let exe = CString::new(WORKER)
        .map_err(|e| SysError::new("preparing", WORKER, std::io::Error::other(e)))?;
    let mut argv = vec![exe.clone()];
    for a in session_args {
        argv.push(
            CString::new(a.as_str())
                .map_err(|e| SysError::new("preparing argument", a, std::io::Error::other(e)))?,
        );
    }

    let root = root.to_path_buf();
    let pid = sys::process::fork_run(move || match pid1(&root, &exe, &argv) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("rootbox-worker: container init: {}", crate::session::chain(&e).join(": "));
            125
        }
    })
    .map_err(|e| SysError::new("forking PID 1 in", "/", e))?;
    // From here this process only waits: it keeps no capability at all.
    k.restrict_capabilities(&[])?;
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(SysError::new("waiting for PID 1", "/", e)),
        }
    }
}

/// Before the fork: the worker image at `root` becomes a private, read-only mount with its
/// own /dev (only [`NODES`]) and /tmp. Nothing is released on an error: every mount is in
/// this process's mount namespace, which ends with it.
pub fn prepare_root(k: &impl Kernel, root: &Path) -> Result<(), SysError> {
    k.make_private(Path::new("/"))?;
    k.bind(root, root, true)?;
    k.remount_bind(root, MountFlags::RDONLY | MountFlags::NOSUID)?;
    let dev = root.join("dev");
    let dev_flags = MountFlags::NOSUID | MountFlags::NOEXEC;
    k.mount(&Mount::virtual_fs("tmpfs", &dev, dev_flags, c"mode=0755,size=1m"))?;
    for (name, kind, major, minor) in NODES {
        k.mknod(&dev.join(name), *kind, 0o666, *major, *minor)?;
    }
    let tmp = root.join("tmp");
    let tmp_flags = MountFlags::NOSUID | MountFlags::NODEV;
    k.mount(&Mount::virtual_fs("tmpfs", &tmp, tmp_flags, c"mode=1777,size=64m"))?;
    Ok(())
}

/// In PID 1 of the new PID namespace, before exec: a fresh /proc (its kernel-tuning parts
/// read-only), `root` becomes `/` with the old root detached, and capabilities are bounded
/// to the session's with no_new_privs.
pub fn enter_root(k: &impl Kernel, root: &Path) -> Result<(), SysError> {
    k.parent_death_kill()?;
    let proc_dir = root.join("proc");
    let proc_flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    k.mount(&Mount::virtual_fs("proc", &proc_dir, proc_flags, c""))?;
    sys::mounts::proc_read_only(k, &proc_dir)?;
    k.chdir(root)?;
    // pivot_root(".", ".") stacks the old root under the new one; detach it right away.
    k.pivot_root_here()?;
    k.unmount(Path::new("."), true)?;
    k.chdir(Path::new("/"))?;
    k.sethostname("rootbox-worker")?;
    k.restrict_capabilities(sys::caps::SESSION)?;
    k.no_new_privs()
}

/// In the child: PID 1 of the new PID namespace.
fn pid1(root: &Path, exe: &CString, argv: &[CString]) -> Result<Infallible, SysError> {
    enter_root(&Real, root)?;
    let env: [CString; 1] = [c"PATH=/sbin:/bin".into()];
    let e = nix::unistd::execve(exe, argv, &env).err().unwrap_or(nix::errno::Errno::EINVAL);
    Err(SysError::new("executing", WORKER, e))
}

#[cfg(test)]
mod tests {
    //! The container init's privileged sequence, recorded; an error stops it at once (the
    //! mounts it made live in a mount namespace that ends with the process).

    use super::*;
    use crate::recorder::{Recorder, INJECTED};

    const PREPARE: &[&str] = &[
        "make-rprivate /",
        "rbind /w on /w",
        "remount /w bind,ro,nosuid",
        "mount tmpfs on /w/dev type tmpfs (nosuid,noexec) mode=0755,size=1m",
        "mknod /w/dev/null c 1:3 0666",
        "mknod /w/dev/zero c 1:5 0666",
        "mknod /w/dev/full c 1:7 0666",
        "mknod /w/dev/random c 1:8 0666",
        "mknod /w/dev/urandom c 1:9 0666",
        "mknod /w/dev/loop-control c 10:237 0666",
        "mount tmpfs on /w/tmp type tmpfs (nosuid,nodev) mode=1777,size=64m",
    ];

    const ENTER: &[&str] = &[
        "pdeathsig SIGKILL",
        "mount proc on /w/proc type proc (nosuid,nodev,noexec)",
        "bind /w/proc/sys on /w/proc/sys",
        "remount /w/proc/sys bind,ro,nosuid,nodev,noexec",
        "bind /w/proc/sysrq-trigger on /w/proc/sysrq-trigger",
        "remount /w/proc/sysrq-trigger bind,ro,nosuid,nodev,noexec",
        "chdir /w",
        "pivot_root . .",
        "umount -l .",
        "chdir /",
        "hostname rootbox-worker",
        "caps CAP_CHOWN,CAP_DAC_OVERRIDE,CAP_FOWNER,CAP_FSETID,CAP_MKNOD,CAP_SETFCAP,\
         CAP_SETPCAP,CAP_SYS_ADMIN",
        "no_new_privs",
    ];

    #[test]
    fn the_root_is_prepared_read_only_with_private_dev_and_tmp() {
        let rec = Recorder::default();
        assert!(prepare_root(&rec, Path::new("/w")).is_ok());
        assert_eq!(rec.calls(), PREPARE);
    }

    #[test]
    fn pid1_pivots_into_the_root_and_bounds_itself_last() {
        let rec = Recorder::default();
        assert!(enter_root(&rec, Path::new("/w")).is_ok());
        assert_eq!(rec.calls(), ENTER);
    }

    #[test]
    fn a_kernel_without_sysrq_trigger_skips_it() {
        let rec = Recorder::default().without("/w/proc/sysrq-trigger");
        assert!(enter_root(&rec, Path::new("/w")).is_ok());
        let expected: Vec<&str> =
            ENTER.iter().copied().filter(|c| !c.contains("sysrq-trigger")).collect();
        assert_eq!(rec.calls(), expected);
    }

    #[test]
    fn every_step_that_fails_stops_the_sequence_there_and_is_named() {
        for (steps, name) in [(PREPARE, "prepare"), (ENTER, "enter")] {
            for (i, step) in steps.iter().enumerate() {
                let rec = Recorder::failing_at(step);
                let r = match name {
                    "prepare" => prepare_root(&rec, Path::new("/w")),
                    _ => enter_root(&rec, Path::new("/w")),
                };
                let calls = rec.calls();
                // The first call with this line fails (an earlier identical line would
                // fail instead: the sequences have none).
                assert_eq!(calls, steps[..=i], "{name}: failing at {step}");
                let e = match r {
                    Ok(()) => panic!("{name}: {step} failed but the sequence succeeded"),
                    Err(e) => e,
                };
                let text = crate::session::chain(&e).join(": ");
                assert!(text.ends_with(INJECTED), "{name}: {text}");
            }
        }
    }
}

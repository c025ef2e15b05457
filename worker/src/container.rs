//! The container sandbox, seen from inside: the host started us in new mount, network, IPC
//! and UTS namespaces with our children in a new PID namespace. Here we make the worker image
//! the root (read-only, private /dev and /tmp, fresh /proc), fork the worker as PID 1 of the
//! PID namespace, bound its capabilities and set no_new_privs, and exec the session.

use std::ffi::CString;
use std::path::Path;

use nix::sys::wait::{waitpid, WaitStatus};
use rustix::fs::{FileType, Mode};
use rustix::mount::{
    mount, mount_bind_recursive, mount_change, mount_remount, MountFlags, MountPropagationFlags,
};

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

fn err<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(rustix::io::Errno) -> SysError + 'a {
    move |e| SysError::new(op, p, e)
}

/// Sets up the root and runs the worker as PID 1; returns the exit code to pass on.
pub fn init(root: &Path, session_args: &[String]) -> Result<i32, SysError> {
    let slash = Path::new("/");
    mount_change(slash, MountPropagationFlags::REC | MountPropagationFlags::PRIVATE)
        .map_err(err("making mounts private at", slash))?;
    mount_bind_recursive(root, root).map_err(err("bind-mounting the worker image at", root))?;
    mount_remount(root, MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID, c"")
        .map_err(err("remounting read-only", root))?;

    let dev = root.join("dev");
    mount(c"tmpfs", &dev, c"tmpfs", MountFlags::NOSUID | MountFlags::NOEXEC, c"mode=0755,size=1m")
        .map_err(err("mounting /dev tmpfs at", &dev))?;
    for (name, ft, major, minor) in NODES {
        let p = dev.join(name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            *ft,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(*major, *minor),
        )
        .map_err(err("creating device node", &p))?;
    }
    let tmp = root.join("tmp");
    mount(c"tmpfs", &tmp, c"tmpfs", MountFlags::NOSUID | MountFlags::NODEV, c"mode=1777,size=64m")
        .map_err(err("mounting /tmp tmpfs at", &tmp))?;

    let exe = CString::new("/bin/rootbox-worker")
        .map_err(|e| SysError::new("preparing", "/bin/rootbox-worker", std::io::Error::other(e)))?;
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
    sys::caps::restrict_to(&[]).map_err(|e| {
        SysError::new("dropping capabilities", "/", std::io::Error::other(e.to_string()))
    })?;
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(SysError::new("waiting for PID 1", "/", e)),
        }
    }
}

/// In the child: PID 1 of the new PID namespace.
fn pid1(
    root: &Path,
    exe: &CString,
    argv: &[CString],
) -> Result<std::convert::Infallible, SysError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| SysError::new("setting the parent-death signal", "/", e))?;
    let proc_dir = root.join("proc");
    mount(
        c"proc",
        &proc_dir,
        c"proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"",
    )
    .map_err(err("mounting proc at", &proc_dir))?;
    sys::mounts::proc_read_only(&proc_dir)?;
    rustix::process::chdir(root).map_err(err("entering", root))?;
    // pivot_root(".", ".") stacks the old root under the new one; detach it right away.
    rustix::process::pivot_root(".", ".").map_err(err("pivot_root into", root))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
        .map_err(err("detaching the old root", root))?;
    rustix::process::chdir("/").map_err(err("entering", Path::new("/")))?;
    rustix::system::sethostname(b"rootbox-worker")
        .map_err(err("setting hostname", Path::new("/")))?;
    sys::caps::restrict_to(sys::caps::SESSION).map_err(|e| {
        SysError::new("bounding capabilities", "/", std::io::Error::other(e.to_string()))
    })?;
    sys::caps::no_new_privs().map_err(|e| SysError::new("setting no_new_privs", "/", e))?;
    let env: [CString; 1] = [c"PATH=/sbin:/bin".into()];
    let e = nix::unistd::execve(exe, argv, &env).err().unwrap_or(nix::errno::Errno::EINVAL);
    Err(SysError::new("executing", "/bin/rootbox-worker", e))
}

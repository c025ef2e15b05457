//! Mounts the sandboxes make beyond their init tables, and the guard of the image's own mount.

use std::path::{Path, PathBuf};

use rustix::mount::{mount_bind, mount_remount, MountFlags};

use super::SysError;

/// Parts of /proc that write to the kernel itself: made read-only (bind-mounted over
/// themselves, then remounted), as container runtimes do.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger"];

/// Makes the kernel-tuning parts of the proc mount at `proc` read-only (those the kernel
/// has: without CONFIG_MAGIC_SYSRQ there is no sysrq-trigger).
pub fn proc_read_only(proc: &Path) -> Result<(), SysError> {
    for name in PROC_READ_ONLY {
        let p = proc.join(name);
        if !p.exists() {
            continue;
        }
        mount_bind(&p, &p).map_err(|e| SysError::new("bind-mounting", &p, e))?;
        let flags = MountFlags::BIND
            | MountFlags::RDONLY
            | MountFlags::NOSUID
            | MountFlags::NODEV
            | MountFlags::NOEXEC;
        mount_remount(&p, flags, c"").map_err(|e| SysError::new("remounting read-only", &p, e))?;
    }
    Ok(())
}

/// A mounted filesystem, unmounted (lazily, as a last resort) when dropped.
pub struct Mount {
    target: PathBuf,
    mounted: bool,
}

impl Mount {
    pub fn ext4(dev: &Path, target: &Path) -> Result<Self, SysError> {
        use rustix::mount::{mount, MountFlags};
        // The image's device nodes are made (mknod) but never opened: nodev keeps an open of
        // one from reaching the host kernel's driver; nothing in it runs (noexec, nosuid).
        let flags =
            MountFlags::NOATIME | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
        mount(dev, target, "ext4", flags, c"noinit_itable")
            .map_err(|e| SysError::new("mounting ext4 on", target, e))?;
        Ok(Self { target: target.to_path_buf(), mounted: true })
    }

    pub fn unmount(mut self) -> Result<(), SysError> {
        self.mounted = false;
        rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::empty())
            .map_err(|e| SysError::new("unmounting", &self.target, e))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

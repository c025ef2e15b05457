//! Mounts the sandboxes make beyond their init tables.

use std::path::Path;

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

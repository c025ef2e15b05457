//! The privileged calls of the container init and of the session, behind one trait, as youki
//! does with its `Syscall`: [`Real`] makes them, and the tests' recorder (`crate::recorder`)
//! writes them down, so the order of mounts, pivots, loop attaches and capability drops, and
//! what is released after each early error, is unit-tested without root.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::SysError;

/// A mount to make: `source` on `target` with `fstype`, `flags` and `data` options.
#[derive(Debug, Clone, Copy)]
pub struct Mount<'a> {
    pub source: &'a Path,
    pub target: &'a Path,
    pub fstype: &'a str,
    pub flags: MountFlags,
    pub data: &'a CStr,
}

impl<'a> Mount<'a> {
    /// A filesystem with no device (tmpfs, proc, sysfs): its source is its type's name.
    pub fn virtual_fs(
        fstype: &'a str,
        target: &'a Path,
        flags: MountFlags,
        data: &'a CStr,
    ) -> Self {
        Self { source: Path::new(fstype), target, fstype, flags, data }
    }
}

/// An attached loop device: its node, detached when the handle is dropped.
pub trait Loop {
    fn path(&self) -> &Path;
    /// The device's number (3 for `/dev/loop3`).
    fn number(&self) -> u32;
}

/// Every privileged call the container init and the session make.
pub trait Kernel {
    type Loop: Loop;

    /// Makes every mount at and below `path` private (nothing propagates to the host).
    fn make_private(&self, path: &Path) -> Result<(), SysError>;
    /// Bind-mounts `source` (recursively) on `target`.
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> Result<(), SysError>;
    /// Changes the flags of the bind mount at `target`.
    fn remount_bind(&self, target: &Path, flags: MountFlags) -> Result<(), SysError>;
    fn mount(&self, m: &Mount<'_>) -> Result<(), SysError>;
    /// Unmounts `target`; `lazy` detaches it even if busy (MNT_DETACH).
    fn unmount(&self, target: &Path, lazy: bool) -> Result<(), SysError>;
    fn mknod(
        &self,
        path: &Path,
        kind: FileType,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), SysError>;
    fn chdir(&self, path: &Path) -> Result<(), SysError>;
    /// `pivot_root(".", ".")`: the current directory becomes the root, the old root stacked
    /// under it (to be detached).
    fn pivot_root_here(&self) -> Result<(), SysError>;
    fn sethostname(&self, name: &str) -> Result<(), SysError>;
    fn parent_death_kill(&self) -> Result<(), SysError>;
    /// Reduces every capability set to `keep`.
    fn restrict_capabilities(&self, keep: &[caps::Capability]) -> Result<(), SysError>;
    fn no_new_privs(&self) -> Result<(), SysError>;
    /// Attaches `backing` to a free loop device, its node under `dev_dir`.
    fn loop_attach(&self, backing: BorrowedFd<'_>, dev_dir: &Path) -> Result<Self::Loop, SysError>;
    /// The size in bytes of the block device at `dev`.
    fn device_size(&self, dev: &Path) -> Result<u64, SysError>;
    /// Writes `value` to a sysfs (or proc) knob.
    fn write_knob(&self, knob: &Path, value: &str) -> Result<(), SysError>;
    /// Whether a directory (a mounted filesystem's marker) exists.
    fn exists(&self, path: &Path) -> bool;
    /// syncfs on the filesystem mounted at `target`; whether it is still writable after.
    fn sync_filesystem(&self, target: &Path) -> Result<bool, SysError>;
    /// FITRIM of the filesystem mounted at `target`; the bytes trimmed.
    fn trim(&self, target: &Path) -> Result<u64, SysError>;
    /// Pins this process, and the applier it forks, to one CPU, the `spread`-th it may use
    /// (see `process::pin_to_one_cpu`); the CPU.
    fn pin_to_one_cpu(&self, spread: usize) -> Result<usize, SysError>;
}

/// The kernel itself.
pub struct Real;

impl Loop for super::loopdev::LoopDevice {
    fn path(&self) -> &Path {
        super::loopdev::LoopDevice::path(self)
    }
    fn number(&self) -> u32 {
        super::loopdev::LoopDevice::number(self)
    }
}

impl Kernel for Real {
    type Loop = super::loopdev::LoopDevice;

    fn make_private(&self, path: &Path) -> Result<(), SysError> {
        rustix::mount::mount_change(
            path,
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        )
        .map_err(|e| SysError::new("making mounts private at", path, e))
    }

    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> Result<(), SysError> {
        let r = if recursive {
            rustix::mount::mount_bind_recursive(source, target)
        } else {
            rustix::mount::mount_bind(source, target)
        };
        r.map_err(|e| SysError::new("bind-mounting", target, e))
    }

    fn remount_bind(&self, target: &Path, flags: MountFlags) -> Result<(), SysError> {
        rustix::mount::mount_remount(target, MountFlags::BIND | flags, c"")
            .map_err(|e| SysError::new("remounting", target, e))
    }

    fn mount(&self, m: &Mount<'_>) -> Result<(), SysError> {
        rustix::mount::mount(m.source, m.target, m.fstype, m.flags, m.data)
            .map_err(|e| SysError::new(mount_op(m.fstype), m.target, e))
    }

    fn unmount(&self, target: &Path, lazy: bool) -> Result<(), SysError> {
        let flags = if lazy { UnmountFlags::DETACH } else { UnmountFlags::empty() };
        rustix::mount::unmount(target, flags).map_err(|e| SysError::new("unmounting", target, e))
    }

    fn mknod(
        &self,
        path: &Path,
        kind: FileType,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), SysError> {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            kind,
            rustix::fs::Mode::from_raw_mode(mode),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| SysError::new("creating device node", path, e))
    }

    fn chdir(&self, path: &Path) -> Result<(), SysError> {
        rustix::process::chdir(path).map_err(|e| SysError::new("entering", path, e))
    }

    fn pivot_root_here(&self) -> Result<(), SysError> {
        rustix::process::pivot_root(".", ".").map_err(|e| SysError::new("pivot_root into", ".", e))
    }

    fn sethostname(&self, name: &str) -> Result<(), SysError> {
        rustix::system::sethostname(name.as_bytes())
            .map_err(|e| SysError::new("setting hostname", name, e))
    }

    fn parent_death_kill(&self) -> Result<(), SysError> {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| SysError::new("setting the parent-death signal", "/", e))
    }

    fn restrict_capabilities(&self, keep: &[caps::Capability]) -> Result<(), SysError> {
        super::caps::restrict_to(keep).map_err(|e| {
            SysError::new("bounding capabilities", "/", std::io::Error::other(e.to_string()))
        })
    }

    fn no_new_privs(&self) -> Result<(), SysError> {
        super::caps::no_new_privs().map_err(|e| SysError::new("setting no_new_privs", "/", e))
    }

    fn loop_attach(&self, backing: BorrowedFd<'_>, dev_dir: &Path) -> Result<Self::Loop, SysError> {
        super::loopdev::LoopDevice::attach(&backing, dev_dir)
    }

    fn device_size(&self, dev: &Path) -> Result<u64, SysError> {
        use std::io::{Seek, SeekFrom};
        let mut f = File::open(dev).map_err(|e| SysError::new("opening", dev, e))?;
        f.seek(SeekFrom::End(0)).map_err(|e| SysError::new("sizing", dev, e))
    }

    fn write_knob(&self, knob: &Path, value: &str) -> Result<(), SysError> {
        std::fs::write(knob, value).map_err(|e| SysError::new("writing", knob, e))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn sync_filesystem(&self, target: &Path) -> Result<bool, SysError> {
        let dir = File::open(target).map_err(|e| SysError::new("opening", target, e))?;
        rustix::fs::syncfs(&dir).map_err(|e| SysError::new("syncing", target, e))?;
        let st = rustix::fs::fstatvfs(&dir).map_err(|e| SysError::new("statfs of", target, e))?;
        Ok(!st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
    }

    fn trim(&self, target: &Path) -> Result<u64, SysError> {
        super::trim::free_blocks(target)
            .map_err(|e| SysError::new("discarding free blocks of", target, e))
    }

    fn pin_to_one_cpu(&self, spread: usize) -> Result<usize, SysError> {
        super::process::pin_to_one_cpu(spread).map_err(|e| {
            SysError::new("pinning to one CPU", Path::new("/proc/self"), std::io::Error::from(e))
        })
    }
}

/// What a failed mount of `fstype` was doing, for its error.
fn mount_op(fstype: &str) -> &'static str {
    match fstype {
        "ext4" => "mounting ext4 on",
        "tmpfs" => "mounting tmpfs on",
        "proc" => "mounting proc on",
        "sysfs" => "mounting sysfs on",
        _ => "mounting on",
    }
}

/// A mounted filesystem, unmounted when dropped: lazily, as a last resort, if nobody
/// unmounted it (or the plain unmount failed).
pub struct Mounted<'k, K: Kernel> {
    kernel: &'k K,
    target: PathBuf,
    mounted: bool,
}

impl<'k, K: Kernel> Mounted<'k, K> {
    pub fn new(kernel: &'k K, m: &Mount<'_>) -> Result<Self, SysError> {
        kernel.mount(m)?;
        Ok(Self { kernel, target: m.target.to_path_buf(), mounted: true })
    }

    pub fn unmount(mut self) -> Result<(), SysError> {
        self.kernel.unmount(&self.target, false)?;
        self.mounted = false;
        Ok(())
    }
}

impl<K: Kernel> Drop for Mounted<'_, K> {
    fn drop(&mut self) {
        if self.mounted {
            let _ = self.kernel.unmount(&self.target, true);
        }
    }
}

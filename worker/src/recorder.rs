//! The tests' stand-in for the kernel, e2fsprogs and the session's host side: every call is
//! written down as one line (`mount tmpfs on /r/dev type tmpfs (nosuid,noexec) mode=0755`),
//! and one chosen call fails, so a test can assert the exact privileged sequence, and what
//! is released after each early error, without root.

use std::cell::RefCell;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rootbox_ext4::canon;
use rootbox_proto::{Identity, JobSpec, Phase};
use rustix::fs::FileType;
use rustix::mount::MountFlags;

use crate::apply::data::Writes;
use crate::ext4::{self, Ext4Error, Usage};
use crate::session::{Applied, Failure, Steps};
use crate::sys::kernel::{Kernel, Loop, Mount};
use crate::sys::SysError;

/// Writes down calls; the first whose line is the armed one, or starts with it and a space
/// (`mke2fs` for `mke2fs /dev/loop0`), fails.
#[derive(Clone, Default)]
pub struct Recorder {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    calls: RefCell<Vec<String>>,
    fail: RefCell<Option<String>>,
    missing: RefCell<Vec<PathBuf>>,
    /// The number of the loop device `loop_attach` answers.
    loop_number: std::cell::Cell<u32>,
}

/// What a failing call answers.
pub const INJECTED: &str = "injected failure";

impl Recorder {
    /// A recorder whose first call starting with `prefix` fails.
    pub fn failing_at(prefix: &str) -> Self {
        let r = Self::default();
        *r.inner.fail.borrow_mut() = Some(prefix.to_string());
        r
    }

    /// `exists` answers false for `path` (everything else exists).
    pub fn without(self, path: &str) -> Self {
        self.inner.missing.borrow_mut().push(PathBuf::from(path));
        self
    }

    /// `loop_attach` answers `/dev/loop<n>` (else `/dev/loop0`).
    pub fn with_loop(self, n: u32) -> Self {
        self.inner.loop_number.set(n);
        self
    }

    pub fn calls(&self) -> Vec<String> {
        self.inner.calls.borrow().clone()
    }

    fn call(&self, line: String) -> Result<(), std::io::Error> {
        let fails = {
            let mut fail = self.inner.fail.borrow_mut();
            let hit = fail.as_deref().is_some_and(|p| {
                line == p || line.strip_prefix(p).is_some_and(|rest| rest.starts_with(' '))
            });
            if hit {
                *fail = None;
            }
            hit
        };
        self.inner.calls.borrow_mut().push(line);
        if fails {
            Err(std::io::Error::other(INJECTED))
        } else {
            Ok(())
        }
    }

    fn sys(&self, op: &'static str, path: &Path, line: String) -> Result<(), SysError> {
        self.call(line).map_err(|e| SysError::new(op, path, e))
    }

    fn tool(&self, tool: &'static str, line: String) -> Result<(), Ext4Error> {
        self.call(line).map_err(|source| Ext4Error::Spawn { tool, source })
    }
}

/// Mount flags as mount(8) prints them.
fn flags(f: MountFlags) -> String {
    let names = [
        (MountFlags::RDONLY, "ro"),
        (MountFlags::NOSUID, "nosuid"),
        (MountFlags::NODEV, "nodev"),
        (MountFlags::NOEXEC, "noexec"),
        (MountFlags::NOATIME, "noatime"),
    ];
    let on: Vec<&str> = names.iter().filter(|(b, _)| f.contains(*b)).map(|(_, n)| *n).collect();
    on.join(",")
}

/// A loop device of the recorder: its detach is written down when it is dropped.
pub struct FakeLoop {
    rec: Recorder,
    path: PathBuf,
    number: u32,
}

impl Loop for FakeLoop {
    fn path(&self) -> &Path {
        &self.path
    }
    fn number(&self) -> u32 {
        self.number
    }
}

impl Drop for FakeLoop {
    fn drop(&mut self) {
        let _ = self.rec.call(format!("loop detach {}", self.path.display()));
    }
}

impl Kernel for Recorder {
    type Loop = FakeLoop;

    fn make_private(&self, path: &Path) -> Result<(), SysError> {
        self.sys("making mounts private at", path, format!("make-rprivate {}", path.display()))
    }
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> Result<(), SysError> {
        let verb = if recursive { "rbind" } else { "bind" };
        let line = format!("{verb} {} on {}", source.display(), target.display());
        self.sys("bind-mounting", target, line)
    }
    fn remount_bind(&self, target: &Path, f: MountFlags) -> Result<(), SysError> {
        self.sys("remounting", target, format!("remount {} bind,{}", target.display(), flags(f)))
    }
    fn mount(&self, m: &Mount<'_>) -> Result<(), SysError> {
        let line = format!(
            "mount {} on {} type {} ({}) {}",
            m.source.display(),
            m.target.display(),
            m.fstype,
            flags(m.flags),
            m.data.to_string_lossy()
        );
        self.sys("mounting on", m.target, line.trim_end().to_string())
    }
    fn unmount(&self, target: &Path, lazy: bool) -> Result<(), SysError> {
        let line = format!("umount {}{}", if lazy { "-l " } else { "" }, target.display());
        self.sys("unmounting", target, line)
    }
    fn mknod(
        &self,
        path: &Path,
        kind: FileType,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), SysError> {
        let t = if kind == FileType::BlockDevice { "b" } else { "c" };
        let line = format!("mknod {} {t} {major}:{minor} {mode:04o}", path.display());
        self.sys("creating device node", path, line)
    }
    fn chdir(&self, path: &Path) -> Result<(), SysError> {
        self.sys("entering", path, format!("chdir {}", path.display()))
    }
    fn pivot_root_here(&self) -> Result<(), SysError> {
        self.sys("pivot_root into", Path::new("."), "pivot_root . .".into())
    }
    fn sethostname(&self, name: &str) -> Result<(), SysError> {
        self.sys("setting hostname", Path::new(name), format!("hostname {name}"))
    }
    fn parent_death_kill(&self) -> Result<(), SysError> {
        self.sys("setting the parent-death signal", Path::new("/"), "pdeathsig SIGKILL".into())
    }
    fn restrict_capabilities(&self, keep: &[caps::Capability]) -> Result<(), SysError> {
        let names: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
        let line =
            if names.is_empty() { "caps none".into() } else { format!("caps {}", names.join(",")) };
        self.sys("bounding capabilities", Path::new("/"), line)
    }
    fn no_new_privs(&self) -> Result<(), SysError> {
        self.sys("setting no_new_privs", Path::new("/"), "no_new_privs".into())
    }
    fn loop_attach(&self, _backing: BorrowedFd<'_>, dev_dir: &Path) -> Result<FakeLoop, SysError> {
        let number = self.inner.loop_number.get();
        let path = dev_dir.join(format!("loop{number}"));
        self.sys("LOOP_CONFIGURE on", &path, format!("loop attach {}", path.display()))?;
        Ok(FakeLoop { rec: self.clone(), path, number })
    }
    fn device_size(&self, dev: &Path) -> Result<u64, SysError> {
        self.sys("sizing", dev, format!("size {}", dev.display()))?;
        Ok(1 << 30)
    }
    fn write_knob(&self, knob: &Path, value: &str) -> Result<(), SysError> {
        self.sys("writing", knob, format!("write {} {value}", knob.display()))
    }
    fn exists(&self, path: &Path) -> bool {
        !self.inner.missing.borrow().iter().any(|m| m == path)
    }
    fn sync_filesystem(&self, target: &Path) -> Result<bool, SysError> {
        self.sys("syncing", target, format!("syncfs {}", target.display()))?;
        Ok(true)
    }
    fn trim(&self, target: &Path) -> Result<u64, SysError> {
        self.sys("discarding free blocks of", target, format!("fitrim {}", target.display()))?;
        Ok(0)
    }
    fn pin_to_one_cpu(&self, spread: usize) -> Result<usize, SysError> {
        self.sys("pinning to one CPU", Path::new("/proc/self"), format!("pin cpu {spread}"))?;
        Ok(0)
    }
}

impl ext4::Tools for Recorder {
    fn mkfs(
        &self,
        dev: &Path,
        _label: Option<&str>,
        _hint: u64,
        identity: Option<&Identity>,
    ) -> Result<(), Ext4Error> {
        match identity {
            Some(id) => {
                self.tool("/sbin/mke2fs", format!("mke2fs -U {} {}", id.uuid, dev.display()))
            }
            None => self.tool("/sbin/mke2fs", format!("mke2fs {}", dev.display())),
        }
    }
    fn stamp(&self, dev: &Path, epoch: u64) -> Result<(), Ext4Error> {
        self.tool("stamp", format!("stamp {} {epoch}", dev.display()))
    }
    fn inode_marks(&self, dev: &Path) -> Result<Vec<u64>, Ext4Error> {
        self.tool("inode marks", format!("inode marks {}", dev.display()))?;
        Ok(Vec::new())
    }
    fn canonicalise(
        &self,
        dev: &Path,
        epoch: u64,
        _marks: &[u64],
    ) -> Result<canon::Report, Ext4Error> {
        self.tool("canonicalise", format!("canonicalise {} {epoch}", dev.display()))?;
        Ok(canon::Report::default())
    }
    fn minimum(&self, dev: &Path) -> Result<ext4::Minimum, Ext4Error> {
        self.tool("/sbin/resize2fs", format!("resize2fs -P {}", dev.display()))?;
        Ok(ext4::Minimum { safe: 64 << 20, least: 64 << 20 })
    }
    fn resize(&self, dev: &Path, bytes: u64) -> Result<(), Ext4Error> {
        self.tool("/sbin/resize2fs", format!("resize2fs {} {}", dev.display(), bytes / ext4::BLOCK))
    }
    fn check(&self, dev: &Path) -> Result<(), Ext4Error> {
        self.tool("/sbin/e2fsck", format!("e2fsck -fn {}", dev.display()))
    }
    fn usage(&self, dev: &Path) -> Result<Usage, Ext4Error> {
        self.tool("superblock", format!("read superblock {}", dev.display()))?;
        Ok(Usage { size_bytes: 64 << 20, used_bytes: 1 << 20, inodes_used: 11 })
    }
}

impl Steps for Recorder {
    fn progress(&mut self, phase: Phase) -> Result<(), Option<Failure>> {
        self.call(format!("progress {phase}"))
            .map_err(|e| Some(Failure::new("reporting progress", &e)))
    }
    fn apply(&mut self, _job: &JobSpec, writes: Writes) -> Result<Applied, Option<Failure>> {
        self.call(format!("apply layers ({} writes)", writes.name()))
            .map_err(|e| Some(Failure::new("applying layers", &e)))?;
        Ok(Applied::default())
    }
}

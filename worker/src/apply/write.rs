//! Creating one entry by name in an already-resolved parent directory, and setting its
//! metadata in the order the kernel requires: content, owner (which clears set-id bits and
//! file capabilities), mode, xattrs, times. Regular files are written sparsely: the holes of
//! a sparse map are seeked over (never read, never written) and all-zero chunks of data stay
//! holes too.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rootbox_proto::SanitisedKind;
use rootbox_tar::Segment;
use rustix::fs::{AtFlags, Dev, FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use super::data::{copy_sparse, Copy, Data};
use super::meta::Meta;
use super::name::ImagePath;
use super::ops::Ops;
use super::report::Report;
use super::{sys, timestamps, ApplyError};

/// The largest file ext4 with 4 KiB blocks holds: 2^32 - 1 blocks (the kernel's s_maxbytes).
pub const EXT4_MAX_FILE: u64 = ((1 << 32) - 1) * 4096;

/// Where an entry is created: the name in its resolved parent, and the image path that
/// names it in errors and reports.
pub struct Place<'a> {
    pub parent: &'a OwnedFd,
    pub name: &'a OsStr,
    pub path: &'a ImagePath,
}

/// How a regular file's data is laid out in the archive.
pub enum Content<'a> {
    /// `size` bytes, in order.
    Whole { size: u64 },
    /// The packed data of `segments`, in a file of `size` bytes.
    Sparse { size: u64, segments: &'a [Segment] },
}

/// Where an xattr the kernel would not take is an image fact to report, not a failure.
fn unstorable(errno: Errno, name: &[u8]) -> Option<&'static str> {
    match errno {
        Errno::OPNOTSUPP => Some("ext4 does not support that xattr namespace"),
        Errno::PERM if name.starts_with(b"user.") => {
            Some("the kernel allows user.* xattrs only on regular files and directories")
        }
        Errno::NOSPC => Some(
            "the inode's xattrs would exceed the one 4 KiB block ext4 (without ea_inode) keeps",
        ),
        Errno::RANGE | Errno::TOOBIG => Some("the value is larger than ext4 stores"),
        Errno::INVAL => Some("the kernel refused the value as malformed"),
        _ => None,
    }
}

/// Sets `meta.xattrs` with `set`; a refusal the kernel makes about the image is reported.
fn set_xattrs(
    meta: &Meta,
    path: &ImagePath,
    report: &mut Report,
    mut set: impl FnMut(&[u8], &[u8]) -> Result<(), Errno>,
) -> Result<(), ApplyError> {
    for (name, value) in &meta.xattrs {
        if let Err(e) = set(name, value) {
            match unstorable(e, name) {
                Some(why) => report.sanitised(
                    Some(path),
                    SanitisedKind::Xattr,
                    format!("xattr {}", rootbox_tar::shown(name)),
                    format!("{why} ({e})"),
                ),
                None => return Err(sys(path, "setting xattr")(e)),
            }
        }
    }
    Ok(())
}

/// Removes the xattrs of `fd` that `keep` does not name (an existing directory taking a new
/// entry's metadata keeps none of its old ones).
fn remove_other_xattrs(fd: &OwnedFd, keep: &Meta, path: &ImagePath) -> Result<(), ApplyError> {
    let size = rustix::fs::flistxattr_query(fd).map_err(sys(path, "listing xattrs"))?;
    if size == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::flistxattr(fd, &mut names).map_err(sys(path, "listing xattrs"))?;
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !keep.xattrs.iter().any(|(k, _)| k == name) {
            rustix::fs::fremovexattr(fd, OsStr::from_bytes(name))
                .map_err(sys(path, "removing an old xattr"))?;
        }
    }
    Ok(())
}

/// Owner, mode, xattrs and times on an open file or directory. `existing`: the inode was
/// there before (a directory over a directory), so xattrs it should not keep are removed.
pub fn set_meta_fd(
    ops: &mut dyn Ops,
    fd: &OwnedFd,
    meta: &Meta,
    existing: bool,
    path: &ImagePath,
    report: &mut Report,
) -> Result<(), ApplyError> {
    set_meta(ops, fd, meta, existing, true, path, report)
}

/// Mode bits a chown clears (set-user-ID, set-group-ID) and the sticky bit: a mode holding
/// none of them can be given at creation instead of by a chmod after the chown.
const CHOWN_CLEARED: u32 = 0o7000;

fn set_meta(
    ops: &mut dyn Ops,
    fd: &OwnedFd,
    meta: &Meta,
    existing: bool,
    chmod: bool,
    path: &ImagePath,
    report: &mut Report,
) -> Result<(), ApplyError> {
    if existing {
        ops.fchown(fd.as_fd(), meta.uid, meta.gid)
    } else {
        ops.fchown_new(fd.as_fd(), meta.uid, meta.gid)
    }
    .map_err(sys(path, "chown"))?;
    if chmod {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(sys(path, "chmod"))?;
    }
    let blocks =
        |fd: &OwnedFd| rustix::fs::fstat(fd).map(|st| st.st_blocks).map_err(sys(path, "stat"));
    let before = if existing { Some(blocks(fd)?) } else { None };
    if existing {
        remove_other_xattrs(fd, meta, path)?;
    }
    set_xattrs(meta, path, report, |name, value| {
        rustix::fs::fsetxattr(fd, OsStr::from_bytes(name), value, XattrFlags::empty())
    })?;
    if let Some(before) = before {
        // The inode's xattr block was freed: commit it now, as the graveyard does for removed
        // entries, so whether later files reuse the block does not follow the clock.
        if blocks(fd)? < before {
            rustix::fs::syncfs(fd).map_err(sys(path, "syncing after an xattr change"))?;
        }
    }
    rustix::fs::futimens(fd, &timestamps(meta.mtime)).map_err(sys(path, "setting times"))
}

/// Whether a regular file of `meta` is created with its mode (then no chmod follows).
fn plain(meta: &Meta) -> bool {
    meta.mode & CHOWN_CLEARED == 0
}

/// Creates the regular file `at` names, for writing: `EEXIST` where the name is taken.
pub fn create_regular(at: &Place<'_>, meta: &Meta) -> Result<OwnedFd, Errno> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // The applier's umask is 0, and a file created read-only is still written through the
    // descriptor that created it: a plain mode is given here, saving a chmod per file.
    let create_mode = if plain(meta) { meta.mode & 0o777 } else { 0o600 };
    rustix::fs::openat(at.parent, at.name, flags, Mode::from_raw_mode(create_mode))
}

/// A regular file [`create_regular`] made: its content from `src` as `content` lays it out.
#[allow(clippy::too_many_arguments)]
pub fn regular(
    ops: &mut dyn Ops,
    at: Place<'_>,
    fd: OwnedFd,
    src: &mut dyn Read,
    content: Content<'_>,
    meta: &Meta,
    data: &mut Data,
    report: &mut Report,
) -> Result<(), ApplyError> {
    let path = at.path;
    let plain = plain(meta);
    let file = File::from(fd);
    let (size, segments) = match content {
        Content::Whole { size } => (size, vec![Segment { offset: 0, len: size }]),
        Content::Sparse { size, segments } => (size, segments.to_vec()),
    };
    // How far data was written: a last chunk of zeros is a hole the size must cover.
    let mut end = 0;
    for s in &segments {
        let (written, written_end) = copy_sparse(&mut src.take(s.len), &file, s.offset, data)
            .map_err(|e| match e {
                Copy::Read(e) => ApplyError::Read(e),
                Copy::Write(e) => {
                    ApplyError::Sys { path: path.to_string(), op: "writing file content", errno: e }
                }
            })?;
        if written != s.len {
            return Err(ApplyError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: tar stream ended inside the file's data"),
            )));
        }
        end = end.max(written_end);
    }
    if end != size {
        file.set_len(size).map_err(|e| ApplyError::Sys {
            path: path.to_string(),
            op: "setting the file's size",
            errno: e,
        })?;
    }
    set_meta(ops, &OwnedFd::from(file), meta, false, !plain, path, report)
}

/// `/proc/self/fd/N/NAME`: how a name without an fd of its own (a symlink, a node) is given
/// xattrs, the final component never followed (`lsetxattr`).
fn proc_path(parent: &OwnedFd, name: &OsStr) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    std::path::Path::new(&format!("/proc/self/fd/{}", parent.as_fd().as_raw_fd())).join(name)
}

fn lset_xattrs(
    parent: &OwnedFd,
    name: &OsStr,
    meta: &Meta,
    path: &ImagePath,
    report: &mut Report,
) -> Result<(), ApplyError> {
    if meta.xattrs.is_empty() {
        return Ok(());
    }
    let at = proc_path(parent, name);
    set_xattrs(meta, path, report, |xname, value| {
        rustix::fs::lsetxattr(&at, OsStr::from_bytes(xname), value, XattrFlags::empty())
    })
}

/// Creates the symlink `at` names: `EEXIST` where the name is taken.
pub fn create_symlink(at: &Place<'_>, target: &[u8]) -> Result<(), Errno> {
    rustix::fs::symlinkat(OsStr::from_bytes(target), at.parent, at.name)
}

/// A symlink [`create_symlink`] made, owned and timed; its xattrs where the kernel takes
/// them (not user.*).
pub fn symlink(
    ops: &mut dyn Ops,
    at: Place<'_>,
    meta: &Meta,
    report: &mut Report,
) -> Result<(), ApplyError> {
    let Place { parent, name, path } = at;
    ops.lchownat(parent.as_fd(), name, meta.uid, meta.gid).map_err(sys(path, "chown"))?;
    lset_xattrs(parent, name, meta, path, report)?;
    rustix::fs::utimensat(parent, name, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(sys(path, "setting times"))
}

/// A device node or fifo.
pub fn node(
    ops: &mut dyn Ops,
    at: Place<'_>,
    ftype: FileType,
    dev: Dev,
    meta: &Meta,
    report: &mut Report,
) -> Result<(), ApplyError> {
    let Place { parent, name, path } = at;
    ops.mknodat(parent.as_fd(), name, ftype, dev).map_err(sys(path, "creating node"))?;
    ops.lchownat(parent.as_fd(), name, meta.uid, meta.gid).map_err(sys(path, "chown"))?;
    // `parent/name` is the node just made and nothing else writes here: chmod by name is safe.
    rustix::fs::chmodat(parent, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
        .map_err(sys(path, "chmod"))?;
    lset_xattrs(parent, name, meta, path, report)?;
    rustix::fs::utimensat(parent, name, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(sys(path, "setting times"))
}

/// An implicit directory again (0755, root, no xattrs): what a directory is when only a
/// layer's entries under it, not the lower layers, describe it.
pub fn reset_implicit(ops: &mut dyn Ops, fd: &OwnedFd, path: &ImagePath) -> Result<(), ApplyError> {
    ops.fchown(fd.as_fd(), 0, 0).map_err(sys(path, "chown"))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(0o755)).map_err(sys(path, "chmod"))?;
    let none = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: rootbox_tar::Time { sec: 0, nsec: 0 },
        xattrs: Vec::new(),
    };
    remove_other_xattrs(fd, &none, path)
}

//! Creating one entry by name in an already-resolved parent directory, and setting its
//! metadata in the order the kernel requires: content, owner (which clears set-id bits and
//! file capabilities), mode, xattrs, times.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use rustix::fs::{AtFlags, Dev, FileType, Gid, Mode, OFlags, Uid, XattrFlags};

use super::meta::Meta;
use super::{sys, timestamps, ApplyError};

fn owner(meta: &Meta) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
}

fn mode(meta: &Meta) -> Mode {
    Mode::from_raw_mode(meta.mode)
}

/// Owner, mode, xattrs and times on an open file or directory.
pub fn set_meta_fd(fd: &OwnedFd, meta: &Meta, shown: &str) -> Result<(), ApplyError> {
    let (u, g) = owner(meta);
    rustix::fs::fchown(fd, u, g).map_err(sys(shown, "chown"))?;
    rustix::fs::fchmod(fd, mode(meta)).map_err(sys(shown, "chmod"))?;
    for (name, value) in &meta.xattrs {
        rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())
            .map_err(sys(shown, "setting xattr"))?;
    }
    rustix::fs::futimens(fd, &timestamps(meta.mtime)).map_err(sys(shown, "setting times"))
}

/// A regular file: its content written sparsely (all-zero chunks become holes).
pub fn regular<R: Read>(
    parent: &OwnedFd,
    name: &OsStr,
    src: &mut R,
    size: u64,
    meta: &Meta,
    buf: &mut [u8],
    shown: &str,
) -> Result<(), ApplyError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(0o600))
        .map_err(sys(shown, "creating file"))?;
    let file = File::from(fd);
    let written = copy_sparse(src, &file, buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::InvalidData {
            ApplyError::Tar(e)
        } else {
            ApplyError::Sys { path: shown.into(), op: "writing file content", errno: e }
        }
    })?;
    if written != size {
        return Err(ApplyError::Tar(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{shown}: tar stream ended after {written} of {size} bytes"),
        )));
    }
    let fd = OwnedFd::from(file);
    set_meta_fd(&fd, meta, shown)
}

/// Copies `src` into `dst`, skipping all-zero chunks so they stay holes. Returns bytes copied.
fn copy_sparse<R: Read>(src: &mut R, dst: &File, buf: &mut [u8]) -> io::Result<u64> {
    let mut pos: u64 = 0;
    let mut trailing_hole = false;
    loop {
        let n = read_full(src, buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if is_zero(chunk) {
            trailing_hole = true;
        } else {
            dst.write_all_at(chunk, pos)?;
            trailing_hole = false;
        }
        pos += n as u64;
    }
    if trailing_hole {
        dst.set_len(pos)?;
    }
    Ok(pos)
}

fn read_full<R: Read>(src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn is_zero(chunk: &[u8]) -> bool {
    let mut words = chunk.chunks_exact(8);
    let any = words.by_ref().fold(0u64, |acc, w| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        acc | u64::from_ne_bytes(b)
    });
    any == 0 && words.remainder().iter().all(|&b| b == 0)
}

/// A symlink. xattrs on symlinks are not carried (user.* is not allowed there by the kernel).
pub fn symlink(
    parent: &OwnedFd,
    name: &OsStr,
    target: &[u8],
    meta: &Meta,
    shown: &str,
    warn: &mut dyn FnMut(String),
) -> Result<(), ApplyError> {
    rustix::fs::symlinkat(OsStr::from_bytes_compat(target), parent, name)
        .map_err(sys(shown, "creating symlink"))?;
    let (u, g) = owner(meta);
    rustix::fs::chownat(parent, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(sys(shown, "chown"))?;
    if !meta.xattrs.is_empty() {
        warn(format!("{shown}: xattrs on a symlink not applied"));
    }
    rustix::fs::utimensat(parent, name, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(sys(shown, "setting times"))
}

/// A device node or fifo.
pub fn node(
    parent: &OwnedFd,
    name: &OsStr,
    ftype: FileType,
    dev: Dev,
    meta: &Meta,
    shown: &str,
) -> Result<(), ApplyError> {
    rustix::fs::mknodat(parent, name, ftype, Mode::from_raw_mode(0o600), dev)
        .map_err(sys(shown, "creating node"))?;
    let (u, g) = owner(meta);
    rustix::fs::chownat(parent, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(sys(shown, "chown"))?;
    // `parent/name` is the node just made and nothing else writes here: chmod by name is safe.
    rustix::fs::chmodat(parent, name, mode(meta), AtFlags::empty()).map_err(sys(shown, "chmod"))?;
    if !meta.xattrs.is_empty() {
        // No fd can carry xattrs for a node; address it through the parent's fd.
        let at = proc_path(parent, name);
        for (xname, value) in &meta.xattrs {
            rustix::fs::lsetxattr(&at, xname.as_str(), value, XattrFlags::empty())
                .map_err(sys(shown, "setting xattr"))?;
        }
    }
    rustix::fs::utimensat(parent, name, &timestamps(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(sys(shown, "setting times"))
}

fn proc_path(parent: &OwnedFd, name: &OsStr) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    std::path::Path::new(&format!("/proc/self/fd/{}", parent.as_fd().as_raw_fd())).join(name)
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &OsStr;
}

impl FromBytesCompat for OsStr {
    fn from_bytes_compat(b: &[u8]) -> &OsStr {
        use std::os::unix::ffi::OsStrExt;
        OsStr::from_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 4096]));
        assert!(is_zero(&[0; 13]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[5] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn sparse_copy_keeps_content_and_length() {
        let dir = std::env::temp_dir().join(format!("rootbox-sparse-{}", std::process::id()));
        let mut data = vec![0u8; 1 << 20];
        data[100] = 7;
        data.extend(vec![0u8; 1 << 20]); // trailing hole
        let f =
            File::options().create(true).truncate(true).read(true).write(true).open(&dir).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = copy_sparse(&mut data.as_slice(), &f, &mut buf).unwrap();
        assert_eq!(n, data.len() as u64);
        let back = std::fs::read(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(back, data);
    }
}

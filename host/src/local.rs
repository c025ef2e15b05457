//! Files of a local source (an `oci:` layout, a `docker-archive:` or `rootfs-tar:` file),
//! opened as root without trusting what the directory holds: beneath the layout's root,
//! never through a symlink (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), never
//! blocking on a FIFO or running a device's driver for more than its `open` (`O_NONBLOCK |
//! O_NOCTTY`, then fstat: regular files only). A file is opened once and read at offsets,
//! so what was checked is what is read.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, ResolveFlags};

const READ: OFlags =
    OFlags::RDONLY.union(OFlags::NONBLOCK).union(OFlags::NOCTTY).union(OFlags::CLOEXEC);

/// A layout's directory, the root every name in it is resolved beneath.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens `dir` (the user named it: a symlink to it is followed, nothing below it is).
    pub fn open(dir: &Path) -> io::Result<Root> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(dir, flags, Mode::empty())?;
        Ok(Root { fd, path: dir.to_path_buf() })
    }

    /// Where `rel` is, for messages.
    pub fn display(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens the regular file `rel` beneath the root.
    pub fn file(&self, rel: &str) -> io::Result<File> {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let fd =
            rustix::fs::openat2(&self.fd, rel, READ, Mode::empty(), how).map_err(|e| match e {
                rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a symlink, or a path leading outside the layout (refused: every file of \
                     a layout is opened beneath it and never through a symlink)",
                ),
                e => e.into(),
            })?;
        regular(File::from(fd))
    }
}

/// Opens the regular file `path` (a single-file source; the user named it, so a symlink to it
/// is followed).
pub fn open_regular(path: &Path) -> io::Result<File> {
    regular(File::from(rustix::fs::open(path, READ, Mode::empty())?))
}

fn regular(f: File) -> io::Result<File> {
    let meta = f.metadata()?;
    if !meta.is_file() {
        let kind = kind(&meta);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a {kind}, not a regular file (refused)"),
        ));
    }
    Ok(f)
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// `len` bytes of `file` from `offset`, read at offsets (readers of one file never share a
/// position).
pub struct At {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl At {
    pub fn new(file: Arc<File>, offset: u64, len: u64) -> At {
        At { file, pos: offset, end: offset.saturating_add(len) }
    }
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_beneath_the_root_without_symlinks() {
        let d = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::NamedTempFile::new().expect("outside");
        std::fs::create_dir(d.path().join("blobs")).expect("mkdir");
        std::fs::write(d.path().join("blobs/ok"), b"data").expect("write");
        std::os::unix::fs::symlink(outside.path(), d.path().join("blobs/link")).expect("link");
        std::os::unix::fs::symlink("ok", d.path().join("blobs/inner")).expect("link");
        nix::unistd::mkfifo(&d.path().join("blobs/fifo"), nix::sys::stat::Mode::S_IRWXU)
            .expect("mkfifo");
        let root = Root::open(d.path()).expect("root");

        let mut s = String::new();
        root.file("blobs/ok").expect("ok").read_to_string(&mut s).expect("read");
        assert_eq!(s, "data");
        for bad in ["blobs/link", "blobs/inner", "../x", "/etc/passwd", "blobs/../../x"] {
            assert!(root.file(bad).is_err(), "{bad} opened");
        }
        // A FIFO with no writer: refused at once, not waited on.
        let t = std::time::Instant::now();
        let e = root.file("blobs/fifo").expect_err("fifo opened");
        assert!(e.to_string().contains("FIFO"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert!(root.file("blobs").expect_err("dir").to_string().contains("directory"));
        assert!(open_regular(&d.path().join("blobs/fifo")).is_err());
    }

    #[test]
    fn reads_at_offsets_share_no_position() {
        let mut f = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut f, b"0123456789").expect("write");
        let f = Arc::new(f);
        let (mut a, mut b) = (At::new(f.clone(), 2, 3), At::new(f, 5, 10));
        let (mut x, mut y) = (String::new(), String::new());
        a.read_to_string(&mut x).expect("a");
        b.read_to_string(&mut y).expect("b");
        assert_eq!((x.as_str(), y.as_str()), ("234", "56789"));
    }
}

//! The output file: built as an unnamed file in the destination's directory (or, where the
//! filesystem has no O_TMPFILE, a temp file beside it) and moved into place only on success. Every failure path removes it: drop on error, and a signal handler on SIGINT,
//! SIGTERM and SIGHUP that also kills the sandbox's process group, gives the container's
//! loop device back (`crate::loopdev`) and removes the sandbox's temp dir.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::scratch;

/// What a signal must undo.
#[derive(Default)]
struct Pending {
    temp: Option<PathBuf>,
    process_group: Option<i32>,
    /// A sandbox's private directory (the microVM's sockets).
    dir: Option<PathBuf>,
    /// The host loop devices the sandbox's worker attached (the container's).
    loops: Option<crate::loopdev::Found>,
}

static PENDING: Mutex<Pending> =
    Mutex::new(Pending { temp: None, process_group: None, dir: None, loops: None });

/// Installs the handler thread once.
pub fn install_signal_cleanup() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            if let Ok(p) = PENDING.lock() {
                if let Some(pg) = p.process_group {
                    let pg = nix::unistd::Pid::from_raw(pg);
                    let kill = || {
                        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                    };
                    // The killed worker never puts its loop device's settings back.
                    crate::loopdev::end_giving_back(p.loops.as_ref(), kill);
                }
                if let Some(t) = &p.temp {
                    let _ = std::fs::remove_file(t);
                }
                if let Some(d) = &p.dir {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
            eprintln!("rootbox: interrupted by signal {sig}; removed the partial output");
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

/// Registers the sandbox's process group for the signal handler.
pub fn track_process_group(pg: Option<i32>) {
    if let Ok(mut p) = PENDING.lock() {
        p.process_group = pg;
    }
}

/// Registers a sandbox for the signal handler: its process group and (the container's) loop
/// devices as they are found, at once (a signal between the two would kill the worker and
/// leave its device tuned); `None, None` when it has ended.
pub fn track_sandbox(pg: Option<i32>, loops: Option<crate::loopdev::Found>) {
    if let Ok(mut p) = PENDING.lock() {
        p.process_group = pg;
        p.loops = loops;
    }
}

/// Registers the sandbox's private directory for the signal handler to remove.
pub fn track_cleanup_dir(dir: Option<PathBuf>) {
    if let Ok(mut p) = PENDING.lock() {
        p.dir = dir;
    }
}

/// Clears the signal handler's record of the temp file when the output is done with.
struct PendingGuard;

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Ok(mut p) = PENDING.lock() {
            p.temp = None;
        }
    }
}

fn set_pending(temp: Option<PathBuf>) {
    if let Ok(mut p) = PENDING.lock() {
        p.temp = temp;
    }
}

/// The output being built: an unnamed file (`O_TMPFILE`) in the destination's directory,
/// which nothing can leave behind, or, where the filesystem has none, a named temp file
/// beside it (`.NAME.rootbox-PID-RANDOM.tmp`, locked while this run lives; the next run
/// removes it if this one was killed). Removed on drop unless finished.
pub struct Output {
    dest: PathBuf,
    dir: PathBuf,
    /// `.NAME.` : what this output's temp names start with.
    prefix: String,
    file: File,
    /// The temp file's name, when it has one.
    named: Option<PathBuf>,
    _guard: PendingGuard,
}

const TEMP_SUFFIX: &str = ".tmp";

impl Output {
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let prefix = format!(".{name}.");
        for left in scratch::sweep(&dir, &prefix, TEMP_SUFFIX) {
            eprintln!(
                "rootbox: removed {}, left by an earlier run that was killed",
                rootbox_proto::text::printable(&left.display().to_string(), false)
            );
        }
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        let (file, named) = match rustix::fs::open(&dir, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => (File::from(fd), None),
            // No O_TMPFILE on this filesystem (or kernel): a named, locked temp file.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOSYS) => {
                let path = dir.join(scratch::name(&prefix, TEMP_SUFFIX));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                set_pending(Some(path.clone()));
                (f, Some(path))
            }
            Err(e) => return Err(e.into()),
        };
        scratch::hold(&file)?;
        Ok(Self { dest: dest.to_path_buf(), dir, prefix, file, named, _guard: PendingGuard })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Sets the sparse length the worker builds on.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// Truncates to `len`, hashes, syncs and moves into place (an unnamed file is linked to
    /// a temp name first: `linkat` cannot replace an existing destination, `rename` can).
    pub fn finish(mut self, len: u64) -> io::Result<(PathBuf, Digest)> {
        self.file.set_len(len)?;
        // An image is an ordinary data file.
        self.file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        // Its writes start out while it is read back for the hash, then are waited for.
        start_writeback(&self.file);
        let digest = sha256_of(&self.file)?;
        self.file.sync_all()?;
        let temp = match self.named.take() {
            Some(p) => p,
            None => {
                let p = self.dir.join(scratch::name(&self.prefix, TEMP_SUFFIX));
                let fd_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                set_pending(Some(p.clone()));
                rustix::fs::linkat(CWD, fd_path.as_str(), CWD, &p, AtFlags::SYMLINK_FOLLOW)?;
                p
            }
        };
        if let Err(e) = std::fs::rename(&temp, &self.dest) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        set_pending(None);
        Ok((self.dest.clone(), digest))
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some(p) = self.named.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts `f`'s write-out; a failure here is found again by the `fsync` that waits for it.
fn start_writeback(f: &File) {
    use std::os::fd::AsFd;
    let _ = crate::sys::start_writeback(f.as_fd());
}

/// How often [`Flusher`] writes the output out while the sandbox builds it.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Writes the output file out to its disk while the sandbox builds it, so the build does not
/// end waiting for the whole image to reach the disk: the worker's device passes no flushes
/// on (`worker/src/tune.rs`), so what is not written out here is left to the `fsync` in
/// [`Output::finish`]. (Measured before flushes were turned off, when the syncfs that ends the
/// apply was the first flush: 0.62-0.83 s without this running, 0.28-0.34 s with it.) It only
/// moves when bytes reach the disk, never which bytes the image holds. Stopped (and joined)
/// on drop.
pub struct Flusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Output {
    /// Starts a [`Flusher`] on the output file.
    pub fn flusher(&self) -> io::Result<Flusher> {
        let file = self.file.try_clone()?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("output-flush".into()).spawn(move || {
            use std::sync::mpsc::RecvTimeoutError;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                start_writeback(&file);
                // An error here is the disk's, and the final fsync reports it.
                let _ = file.sync_data();
            }
        })?;
        Ok(Flusher { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The output's filesystem ran out of room (exit code 1: the host, not the image).
#[derive(Debug, thiserror::Error)]
#[error(
    "the filesystem holding {dir} is full ({free} bytes free of {total}, mounted at {mount}): \
     the build had written {written} bytes and needs about {needed} in all; free space there \
     or write the image elsewhere"
)]
pub struct NoSpace {
    pub dir: String,
    pub mount: String,
    pub free: u64,
    pub total: u64,
    pub written: u64,
    pub needed: u64,
}

/// Below this much room for root (f_bfree), the output's filesystem counts as full while a
/// build runs: a write the worker makes now fails, whatever it is.
const FULL_BELOW: u64 = 1 << 20;

impl Output {
    /// A check, cheap enough to poll, of whether the destination's filesystem is full now.
    pub fn full_check(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let dir = self.dir().to_path_buf();
        move || {
            nix::sys::statvfs::statvfs(&dir)
                .is_ok_and(|st| st.blocks_free().saturating_mul(st.fragment_size()) < FULL_BELOW)
        }
    }

    /// After a failed build: whether the destination's filesystem is (nearly) full, which
    /// explains the failure better than the worker's I/O error can. `needed` estimates the
    /// space the image needs.
    pub fn no_space(&self, needed: u64) -> Option<NoSpace> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.dir();
        let st = nix::sys::statvfs::statvfs(dir).ok()?;
        let unit = st.fragment_size() as u64;
        let (free, total) = (st.blocks_available() as u64 * unit, st.blocks() as u64 * unit);
        // Full: what is left is less than 1% or 16 MiB, whichever is more.
        if free >= (total / 100).max(16 << 20) {
            return None;
        }
        let written = self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        Some(NoSpace {
            dir: dir.display().to_string(),
            mount: mount_point(dir),
            free,
            total,
            written,
            needed: needed.max(written),
        })
    }
}

/// The mount point `dir` is on, from /proc/self/mountinfo (the longest one that holds it).
fn mount_point(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| dir.starts_with(m))
        .max_by_key(|m| m.len())
        .unwrap_or_else(|| "?".into())
}

/// sha256 of an open file from its first byte, holes read as zeros (as any reader of the
/// image will); read at offsets, so its position is untouched.
///
/// The reads (copies out of the page cache, about a third of the time) run on a thread of
/// their own a few buffers ahead of the hashing, so the two overlap on two cores: the hash
/// is the last step before the output is placed, with the worker gone and the other core
/// idle.
pub fn sha256_of(f: &File) -> io::Result<Digest> {
    use std::os::unix::fs::FileExt;
    use std::sync::mpsc::sync_channel;
    const BUF: usize = 256 << 10;
    const BUFS: usize = 4;
    let (full_tx, full_rx) = sync_channel::<io::Result<(Vec<u8>, usize)>>(BUFS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFS);
    for _ in 0..BUFS {
        // Cannot fail: the channel has room for every buffer and its receiver is held here.
        let _ = empty_tx.send(vec![0u8; BUF]);
    }
    std::thread::scope(|s| {
        // Ends at the end of the file, on a read error (sent on), or when the hasher stops
        // (its ends of both channels dropped).
        s.spawn(move || {
            let mut at = 0u64;
            while let Ok(mut buf) = empty_rx.recv() {
                let read = loop {
                    match f.read_at(&mut buf, at) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        r => break r,
                    }
                };
                match read {
                    Ok(0) => break,
                    Ok(n) => {
                        at += n as u64;
                        if full_tx.send(Ok((buf, n))).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = full_tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let mut h = Sha256::new();
        for read in full_rx {
            let (buf, n) = read?;
            h.update(&buf[..n]);
            // The reader may have stopped: then nothing more arrives either.
            let _ = empty_tx.send(buf);
        }
        Ok(Digest::from_sha256(h))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn the_hash_is_of_every_byte_holes_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        // Empty, shorter than a buffer, buffers and a tail, holes between written bytes.
        for (len, writes) in [
            (0u64, vec![]),
            (100, vec![(3u64, b"abc".as_slice())]),
            (
                5 << 20 | 17,
                vec![(0, b"head".as_slice()), (3 << 20, b"middle"), ((5 << 20) + 13, b"tail")],
            ),
        ] {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("img"))
                .unwrap();
            f.set_len(len).unwrap();
            let mut want = vec![0u8; len as usize];
            for (at, b) in writes {
                f.write_all_at(b, at).unwrap();
                want[at as usize..at as usize + b.len()].copy_from_slice(b);
            }
            let want = Digest::from_sha256(Sha256::new_with_prefix(&want));
            assert_eq!(sha256_of(&f).unwrap(), want, "a file of {len} bytes");
        }
    }

    #[test]
    fn a_read_error_is_the_hash_error() {
        // A directory opened for reading fails every read (EISDIR).
        let dir = tempfile::tempdir().unwrap();
        let d = File::open(dir.path()).unwrap();
        assert!(sha256_of(&d).is_err());
    }
}

//! The output file: built as a temp file beside the destination and renamed into place only on
//! success. Every failure path removes it: drop on error, and a signal handler on SIGINT,
//! SIGTERM and SIGHUP that also kills the sandbox's process group and removes its temp dir.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// What a signal must undo.
#[derive(Default)]
struct Pending {
    temp: Option<PathBuf>,
    process_group: Option<i32>,
    /// A sandbox's private directory (the microVM's sockets).
    dir: Option<PathBuf>,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending { temp: None, process_group: None, dir: None });

/// Installs the handler thread once.
pub fn install_signal_cleanup() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            if let Ok(p) = PENDING.lock() {
                if let Some(pg) = p.process_group {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pg),
                        nix::sys::signal::Signal::SIGKILL,
                    );
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

/// A temp file beside the destination; removed on drop unless finished.
pub struct Output {
    dest: PathBuf,
    temp: tempfile::NamedTempFile,
    _guard: PendingGuard,
}

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
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)?;
        if let Ok(mut p) = PENDING.lock() {
            p.temp = Some(temp.path().to_path_buf());
        }
        Ok(Self { dest: dest.to_path_buf(), temp, _guard: PendingGuard })
    }

    pub fn file(&self) -> &File {
        self.temp.as_file()
    }

    /// Sets the sparse length the worker builds on.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.file().set_len(len)
    }

    /// Truncates to `len`, hashes, syncs and renames into place.
    pub fn finish(self, len: u64) -> io::Result<(PathBuf, Digest)> {
        let Output { dest, temp, _guard } = self;
        let mut perms = temp.as_file().metadata()?.permissions();
        temp.as_file().set_len(len)?;
        // NamedTempFile creates 0600; an image is an ordinary data file.
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        temp.as_file().set_permissions(perms)?;
        let digest = sha256_file(temp.path())?;
        temp.as_file().sync_all()?;
        temp.persist(&dest).map_err(|e| e.error)?;
        Ok((dest, digest))
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

    fn dir(&self) -> &Path {
        self.dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
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
        let written = self.temp.as_file().metadata().map(|m| m.blocks() * 512).unwrap_or(0);
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

/// sha256 of a file, reading holes as zeros (as any reader of the image will).
pub fn sha256_file(path: &Path) -> io::Result<Digest> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    Ok(Digest::from_sha256(h))
}

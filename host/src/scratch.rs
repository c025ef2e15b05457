//! Names a run leaves only when it is killed (`kill -9` runs no handler): the output's temp
//! file where the filesystem has no `O_TMPFILE`, and the microVM's socket directory. Each
//! carries its run's PID and is locked (`flock`) while that run lives; the next run in the
//! same place removes those whose lock it can take and whose run is gone.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};

/// `{prefix}rootbox-{pid}-{unique}{suffix}`: a name of this run (unique within it).
pub fn name(prefix: &str, suffix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let unique = (nanos << 16) ^ COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}rootbox-{}-{unique:x}{suffix}", std::process::id())
}

/// Locks `f` for as long as it (or any duplicate of it) stays open.
pub fn hold(f: &impl AsFd) -> io::Result<()> {
    rustix::fs::flock(f, FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from)
}

/// A private directory of this run (the microVM's sockets), `rootbox-PID-RANDOM{suffix}` in
/// `base`, locked while it lives and removed on drop; one that a killed run left there is
/// removed when the next one is made.
pub struct Dir {
    dir: tempfile::TempDir,
    _lock: File,
}

impl Dir {
    pub fn create(base: &Path, suffix: &str) -> io::Result<Dir> {
        sweep(base, "", suffix);
        let dir = tempfile::Builder::new()
            .prefix(&format!("rootbox-{}-", std::process::id()))
            .suffix(suffix)
            .tempdir_in(base)?;
        let lock = File::open(dir.path())?;
        hold(&lock)?;
        Ok(Dir { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn close(self) -> io::Result<()> {
        self.dir.close()
    }
}

/// Removes, in `dir`, what runs that are gone left under names made by [`name`] with this
/// `prefix` and `suffix`. Returns what it removed.
pub fn sweep(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = pid_in(&name, prefix, suffix) else { continue };
        if pid == std::process::id() || alive_rootbox(pid) {
            continue;
        }
        let path = e.path();
        if remove_if_unlocked(&path).unwrap_or(false) {
            removed.push(path);
        }
    }
    removed
}

/// The PID in a name made by [`name`].
fn pid_in(name: &OsStr, prefix: &str, suffix: &str) -> Option<u32> {
    let rest = name.as_bytes().strip_prefix(prefix.as_bytes())?.strip_prefix(b"rootbox-")?;
    let rest = rest.strip_suffix(suffix.as_bytes())?;
    let (pid, random) = std::str::from_utf8(rest).ok()?.split_once('-')?;
    if random.is_empty() || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether `pid` is a live rootbox (a PID reused by another program does not count).
fn alive_rootbox(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "rootbox")
}

/// Removes `path` (a regular file or a directory, never followed) if no live run holds its
/// lock, checking it is still the inode locked.
fn remove_if_unlocked(path: &Path) -> io::Result<bool> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty())?;
    let f = File::from(fd);
    let meta = f.metadata()?;
    if !(meta.is_file() || meta.is_dir()) || hold(&f).is_err() {
        return Ok(false);
    }
    let now = std::fs::symlink_metadata(path)?;
    if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
        return Ok(false);
    }
    if meta.is_dir() {
        std::fs::remove_dir_all(path)?;
    } else {
        std::fs::remove_file(path)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid_and_parse_back() {
        let n = name(".out.ext4.", ".tmp");
        assert_eq!(pid_in(OsStr::new(&n), ".out.ext4.", ".tmp"), Some(std::process::id()));
        assert_eq!(pid_in(OsStr::new(".out.ext4.rootbox-12-z/.tmp"), ".out.ext4.", ".tmp"), None);
        assert_eq!(pid_in(OsStr::new(".out.ext4.rootbox-12-.tmp"), ".out.ext4.", ".tmp"), None);
        assert_eq!(pid_in(OsStr::new(".other.rootbox-12-ab.tmp"), ".out.ext4.", ".tmp"), None);
        assert_eq!(
            pid_in(OsStr::new(".out.ext4.rootbox-12-ab.tmp"), ".out.ext4.", ".tmp"),
            Some(12)
        );
    }

    #[test]
    fn only_what_gone_runs_left_unlocked_is_removed() {
        let d = tempfile::tempdir().expect("tempdir");
        // A run that is gone (no such PID): removed, file or directory.
        let gone_file = d.path().join(".o.rootbox-4194999-ab.tmp");
        std::fs::write(&gone_file, b"x").expect("write");
        let gone_dir = d.path().join(".o.rootbox-4194998-cd.tmp");
        std::fs::create_dir(&gone_dir).expect("mkdir");
        std::fs::write(gone_dir.join("sock"), b"").expect("write");
        // Ours, and one whose lock is held: kept.
        let ours = d.path().join(name(".o.", ".tmp"));
        std::fs::write(&ours, b"x").expect("write");
        let held_path = d.path().join(".o.rootbox-4194997-ef.tmp");
        let held = File::create(&held_path).expect("create");
        hold(&held).expect("lock");
        // Not a name of ours, and a symlink: never touched.
        let other = d.path().join(".o.something.tmp");
        std::fs::write(&other, b"x").expect("write");
        let link = d.path().join(".o.rootbox-4194996-01.tmp");
        std::os::unix::fs::symlink(&other, &link).expect("symlink");

        let mut removed = sweep(d.path(), ".o.", ".tmp");
        removed.sort();
        let mut want = vec![gone_file, gone_dir];
        want.sort();
        assert_eq!(removed, want);
        assert!(ours.exists() && held_path.exists() && other.exists());
        assert!(link.symlink_metadata().is_ok());
    }
}

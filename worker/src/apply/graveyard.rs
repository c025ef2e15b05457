//! Removed entries, kept alive until a point of the build the layers alone decide.
//!
//! A journalled ext4 (the image is mounted `data=ordered`) gives the blocks of a removed
//! file back to the allocator only when the transaction that freed them commits: every 5 s,
//! or when the journal fills. Whether the next files land in those blocks then follows the
//! clock, so the same layers built twice could place files differently (measured: a third
//! layer held back 7 s after the second deleted 40 files moved all 40 new files; see the
//! `registry::timing` test). Without a journal the blocks come back at once, but ext4 then
//! skips inodes freed in the last minute, unless freed in the current second: the clock again.
//!
//! So a removed inode is held open (`O_PATH`) here, which keeps it and its blocks allocated,
//! and every [`GRAVES`] entries or [`GRAVE_BYTES`] bytes, and once after the last layer, all
//! are released at once and the filesystem synced, which commits the frees before the next
//! entry is written. The points are counted in removals, never in time.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{openat, syncfs, Mode, OFlags};
use rustix::io::Errno;

/// Removed entries held before a release: bounds the applier's open descriptors, so that
/// they fit under the 1024 open files hosts commonly allow (the count cannot follow the
/// host's limit: the release points shape the image).
pub const GRAVES: usize = 512;
/// Bytes of removed entries held before a release: bounds the space they keep.
pub const GRAVE_BYTES: u64 = 1 << 30;

pub struct Graveyard {
    /// A descriptor of the image's filesystem, for `syncfs`.
    fs: OwnedFd,
    held: Vec<OwnedFd>,
    bytes: u64,
    /// Releases so far.
    pub releases: u64,
}

impl Graveyard {
    /// For the filesystem holding `target`.
    pub fn open(target: &Path) -> Result<Self, Errno> {
        let fs = openat(
            rustix::fs::CWD,
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { fs, held: Vec::new(), bytes: 0, releases: 0 })
    }

    /// Keeps `inode` (just unlinked, taking `bytes` on disk) until the next release.
    pub fn hold(&mut self, inode: OwnedFd, bytes: u64) -> Result<(), Errno> {
        self.held.push(inode);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.held.len() >= GRAVES || self.bytes >= GRAVE_BYTES {
            self.release()?;
        }
        Ok(())
    }

    /// Frees everything held, in the order it was removed, and commits the frees.
    pub fn release(&mut self) -> Result<(), Errno> {
        if self.held.is_empty() {
            return Ok(());
        }
        self.held.clear();
        self.bytes = 0;
        self.releases += 1;
        syncfs(&self.fs)
    }

    /// Entries held now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graveyard(dir: &Path) -> Graveyard {
        Graveyard::open(dir).unwrap_or_else(|e| panic!("graveyard: {e}"))
    }

    fn held(dir: &Path, name: &str) -> OwnedFd {
        let p = dir.join(name);
        std::fs::write(&p, b"x").unwrap_or_else(|e| panic!("{e}"));
        let fd = openat(rustix::fs::CWD, &p, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::remove_file(&p).unwrap_or_else(|e| panic!("{e}"));
        fd
    }

    #[test]
    fn releases_every_graves_entries_and_on_demand() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut g = graveyard(dir.path());
        for i in 0..GRAVES - 1 {
            g.hold(held(dir.path(), &format!("f{i}")), 4096).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!((g.held(), g.releases), (GRAVES - 1, 0));
        g.hold(held(dir.path(), "last"), 4096).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((g.held(), g.releases), (0, 1));
        g.hold(held(dir.path(), "more"), 4096).unwrap_or_else(|e| panic!("{e}"));
        g.release().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((g.held(), g.releases), (0, 2));
        g.release().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.releases, 2, "an empty release commits nothing");
    }

    #[test]
    fn releases_when_the_held_bytes_reach_the_bound() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut g = graveyard(dir.path());
        g.hold(held(dir.path(), "a"), GRAVE_BYTES - 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.releases, 0);
        g.hold(held(dir.path(), "b"), 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((g.held(), g.releases), (0, 1));
    }
}

//! The blob cache registry pulls share: an OCI image layout at `$XDG_CACHE_HOME/rootbox/oci`
//! (default `~/.cache/rootbox/oci`), so skopeo or umoci can read it.
//!
//! ```text
//! oci-layout, index.json        the layout; index.json lists every image pulled (one entry per
//!                               reference and platform), updated under .rootbox/index.lock
//! blobs/sha256/<hex>            manifests, configs and layers, each verified before its rename
//! .rootbox/lock                 pulls hold it shared for their whole run; prune takes it exclusive
//! .rootbox/ingest/              temp files being downloaded, and one lock file per blob so that
//!                               concurrent pulls download a blob once
//! ```
//!
//! A blob only ever appears under `blobs/` by `rename` of a complete temp file whose digest was
//! checked, so no reader sees a torn blob. Digests are validated ([`Digest`]) before they
//! become paths. The cache never interprets layer content.

mod index;
mod prune;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use crate::digest::Digest;

pub use index::Entry;
pub use prune::{ls, prune};

const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A cache operation that failed, naming the path it touched.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no cache directory: neither $XDG_CACHE_HOME nor $HOME is set")]
    NoHome,
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// A cache directory another user could change under rootbox (which runs as root).
    #[error("refusing the cache directory {path}: it is {why}; remove it or point $XDG_CACHE_HOME elsewhere")]
    Unsafe { path: PathBuf, why: &'static str },
    #[error("{path} is not valid JSON of the expected shape")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, CacheError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io { op, path: path.to_path_buf(), source }
}

/// A directory of the cache must be a real directory (not a symlink), owned by this user or
/// root, and writable by no one else: what it holds is shipped into images and parsed.
fn safe_dir(d: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(d).map_err(io_err("inspecting", d))?;
    let unsafe_because = |why| Err(CacheError::Unsafe { path: d.to_path_buf(), why });
    if m.file_type().is_symlink() {
        return unsafe_because("a symlink");
    }
    if !m.is_dir() {
        return unsafe_because("not a directory");
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me && m.uid() != 0 {
        return unsafe_because("owned by another user");
    }
    if m.mode() & 0o022 != 0 {
        return unsafe_because("writable by its group or by others");
    }
    Ok(())
}

/// Shared cache locks held until the process exits: a pull's blob paths must stay valid
/// while its layers are shipped, long after the source returned them.
static HELD: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// `$XDG_CACHE_HOME/rootbox/oci`, else `$HOME/.cache/rootbox/oci`.
    pub fn default_dir() -> Result<PathBuf> {
        let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x),
            None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                Some(h) => PathBuf::from(h).join(".cache"),
                None => return Err(CacheError::NoHome),
            },
        };
        Ok(base.join("rootbox/oci"))
    }

    /// Opens (creating when needed) the cache at `root`.
    pub fn open(root: PathBuf) -> Result<Self> {
        let c = Self { root };
        for d in [c.root.join("blobs/sha256"), c.private().join("ingest")] {
            fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        for d in [
            c.root.clone(),
            c.root.join("blobs"),
            c.root.join("blobs/sha256"),
            c.private(),
            c.private().join("ingest"),
        ] {
            safe_dir(&d)?;
        }
        let marker = c.root.join("oci-layout");
        if !marker.is_file() {
            c.write_atomic(&marker, LAYOUT)?;
        }
        let index = c.root.join("index.json");
        if !index.is_file() {
            let _g = c.index_lock()?;
            if !index.is_file() {
                c.write_atomic(&index, &index::empty())?;
            }
        }
        Ok(c)
    }

    pub fn open_default() -> Result<Self> {
        Self::open(Self::default_dir()?)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn private(&self) -> PathBuf {
        self.root.join(".rootbox")
    }

    fn lock_file(&self, path: &Path, how: FlockArg) -> Result<Flock<File>> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err("opening", path))?;
        Flock::lock(f, how).map_err(|(_, source)| CacheError::Lock { path: path.into(), source })
    }

    /// Holds the cache shared until the process exits (prune waits for it).
    pub fn hold(&self) -> Result<()> {
        let g = self.lock_file(&self.private().join("lock"), FlockArg::LockShared)?;
        if let Ok(mut held) = HELD.lock() {
            held.push(g);
        }
        Ok(())
    }

    /// The cache to itself, for prune: waits until no pull holds it.
    fn exclusive(&self) -> Result<Flock<File>> {
        let path = self.private().join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(g) => Ok(g),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                eprintln!("rootbox: waiting for running pulls to release the cache");
                Flock::lock(f, FlockArg::LockExclusive)
                    .map_err(|(_, source)| CacheError::Lock { path, source })
            }
            Err((_, source)) => Err(CacheError::Lock { path, source }),
        }
    }

    fn index_lock(&self) -> Result<Flock<File>> {
        self.lock_file(&self.private().join("index.lock"), FlockArg::LockExclusive)
    }

    /// One downloader per blob: held while a blob is fetched, so concurrent pulls wait and
    /// then find it in place instead of downloading it again.
    pub fn blob_lock(&self, d: &Digest) -> Result<Flock<File>> {
        self.lock_file(
            &self.private().join("ingest").join(format!("{}.lock", d.hex())),
            FlockArg::LockExclusive,
        )
    }

    /// `blobs/sha256/<hex>` (the digest was validated, so the name is 64 hex digits).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The blob, when present with the expected size.
    pub fn has(&self, d: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(d)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// A temp file to download into, removed on drop unless committed.
    pub fn temp(&self, d: &Digest) -> Result<tempfile::NamedTempFile> {
        let dir = self.private().join("ingest");
        tempfile::Builder::new()
            .prefix(&format!("{}.", d.hex()))
            .suffix(".part")
            .tempfile_in(&dir)
            .map_err(io_err("creating a temp file in", &dir))
    }

    /// Moves a complete, verified temp file into place as blob `d`.
    pub fn commit(&self, temp: tempfile::NamedTempFile, d: &Digest) -> Result<PathBuf> {
        let dest = self.blob_path(d);
        temp.as_file().sync_all().map_err(io_err("syncing", temp.path()))?;
        temp.persist(&dest).map_err(|e| CacheError::Io {
            op: "renaming a download to",
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }

    /// Stores small verified bytes (a manifest or config) as blob `d`.
    pub fn put(&self, d: &Digest, bytes: &[u8]) -> Result<PathBuf> {
        let mut t = self.temp(d)?;
        t.write_all(bytes).map_err(io_err("writing", t.path()))?;
        self.commit(t, d)
    }

    /// Removes a blob found corrupt, unless another process has replaced it since `seen`
    /// (its device and inode) was read.
    pub fn discard(&self, d: &Digest, seen: Option<(u64, u64)>) -> Result<()> {
        let p = self.blob_path(d);
        if let (Some(seen), Ok(m)) = (seen, fs::metadata(&p)) {
            if (m.dev(), m.ino()) != seen {
                return Ok(());
            }
        }
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &p)(e)),
            _ => Ok(()),
        }
    }

    /// Device and inode of a blob file, to tell it from a replacement later.
    pub fn identity(&self, d: &Digest) -> Option<(u64, u64)> {
        fs::metadata(self.blob_path(d)).ok().map(|m| (m.dev(), m.ino()))
    }

    /// Records (or refreshes) an image in index.json and marks its blobs used now.
    pub fn record(&self, entry: Entry, blobs: &[Digest]) -> Result<()> {
        for d in blobs {
            touch(&self.blob_path(d));
        }
        let _g = self.index_lock()?;
        let path = self.root.join("index.json");
        let mut idx = index::read(&path)?;
        idx.upsert(entry);
        self.write_atomic(&path, &idx.to_bytes())
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut t = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(io_err("creating a temp file in", dir))?;
        t.write_all(bytes).map_err(io_err("writing", t.path()))?;
        t.as_file().sync_all().map_err(io_err("syncing", t.path()))?;
        let mut perms = t.as_file().metadata().map_err(io_err("stat", t.path()))?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        let _ = t.as_file().set_permissions(perms);
        t.persist(path).map_err(|e| CacheError::Io {
            op: "renaming into place",
            path: path.into(),
            source: e.error,
        })?;
        Ok(())
    }
}

/// What `rootbox cache` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ls { json: bool },
    Prune { older_than: Option<Duration>, max_size: Option<u64>, json: bool },
}

/// `rootbox cache ls|prune`.
pub fn run(cmd: &Command) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = Cache::default_dir()?;
    let cache =
        Cache::open(dir.clone()).with_context(|| format!("opening the cache {}", dir.display()))?;
    match cmd {
        Command::Ls { json } => ls(&cache, *json),
        Command::Prune { older_than, max_size, json } => {
            prune(&cache, *older_than, *max_size, *json)
        }
    }
}

/// Sets a file's mtime to now (the blob's last use; best effort).
fn touch(p: &Path) {
    if let Ok(f) = File::options().append(true).open(p) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> Digest {
        Digest::of(b)
    }

    #[test]
    fn cache_directories_others_could_change_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        Cache::open(real.clone()).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let Err(e) = Cache::open(link) else { panic!("a symlinked cache opened") };
        assert!(e.to_string().contains("a symlink"), "{e}");
        let blobs = real.join("blobs/sha256");
        fs::set_permissions(&blobs, fs::Permissions::from_mode(0o777)).unwrap();
        let Err(e) = Cache::open(real.clone()) else { panic!("a world-writable cache opened") };
        assert!(e.to_string().contains("writable"), "{e}");
        fs::set_permissions(&blobs, fs::Permissions::from_mode(0o755)).unwrap();
        Cache::open(real).unwrap();
    }

    #[test]
    fn layout_blobs_and_commit() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::open(d.path().join("oci")).unwrap();
        assert_eq!(fs::read(c.root().join("oci-layout")).unwrap(), LAYOUT);
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(c.root().join("index.json")).unwrap()).unwrap();
        assert_eq!(idx["schemaVersion"], 2);
        let dg = digest(b"hello");
        assert!(!c.has(&dg, 5));
        let p = c.put(&dg, b"hello").unwrap();
        assert_eq!(p, c.root().join("blobs/sha256").join(dg.hex()));
        assert!(c.has(&dg, 5));
        assert!(!c.has(&dg, 6));
        // Nothing is left in the ingest directory but lock files.
        let left: Vec<_> = fs::read_dir(c.private().join("ingest")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        // A replaced blob is not discarded on the strength of an old identity.
        let old = c.identity(&dg);
        c.put(&dg, b"hello").unwrap();
        c.discard(&dg, old).unwrap();
        assert!(c.has(&dg, 5));
        c.discard(&dg, c.identity(&dg)).unwrap();
        assert!(!c.has(&dg, 5));
        // A dropped temp file leaves nothing.
        drop(c.temp(&dg).unwrap());
        assert_eq!(fs::read_dir(c.private().join("ingest")).unwrap().count(), 0);
    }
}

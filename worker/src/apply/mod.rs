//! Layer application: a tar stream applied straight into the mounted image, one pass.
//!
//! Owns the overlay rules (whiteouts, opaque directories, type replacement, last-wins
//! duplicates) and the order of metadata writes (content, owner, mode, xattrs, times;
//! directory times last of all). It never resolves a path itself: see [`root`].

mod meta;
mod name;
mod root;
mod write;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;

use rootbox_proto::Limits;
use rustix::fs::{Mode, OFlags, Timestamps};
use rustix::io::Errno;

pub use meta::Time;
use meta::{parse_pax, read_meta, MetaError};
use name::{classify, normalize, ImagePath, Meaning, NameError};
use root::{is_dir, lstat_at, remove_all, Root};

/// A failure applying one entry, naming the entry.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{path}: {source}")]
    Name {
        path: String,
        #[source]
        source: NameError,
    },
    #[error("{path}: {source}")]
    Meta {
        path: String,
        #[source]
        source: MetaError,
    },
    #[error("{path}: refusing {why}")]
    Refused { path: String, why: String },
    #[error("{path}: {op} failed")]
    Sys {
        path: String,
        op: &'static str,
        #[source]
        errno: std::io::Error,
    },
    #[error("reading the layer's tar stream")]
    Tar(#[source] std::io::Error),
    #[error("the image has more than {max} entries (--max-entries)")]
    TooManyEntries { max: u64 },
}

impl ApplyError {
    /// The entry path the error is about, if any.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Name { path, .. }
            | Self::Meta { path, .. }
            | Self::Refused { path, .. }
            | Self::Sys { path, .. } => Some(path),
            Self::Tar(_) | Self::TooManyEntries { .. } => None,
        }
    }
}

fn sys<'a>(path: &'a str, op: &'static str) -> impl FnOnce(Errno) -> ApplyError + 'a {
    move |e| ApplyError::Sys { path: path.to_string(), op, errno: e.into() }
}

/// Applies layers in order into the directory it was opened on.
pub struct Applier<'w> {
    root: Root,
    limits: Limits,
    entries: u64,
    /// Paths (and their ancestors) written by the current layer: what whiteouts and opaque
    /// markers of the same layer must not remove.
    layer_paths: HashSet<ImagePath>,
    /// Directory times, applied after every layer so later writes do not disturb them.
    dir_times: BTreeMap<ImagePath, Time>,
    buf: Vec<u8>,
    /// Applying injected files: root-owned, never through a symlink, never over a directory.
    inject: bool,
    warn: &'w mut dyn FnMut(String),
}

impl<'w> Applier<'w> {
    pub fn new(
        target: &Path,
        limits: Limits,
        warn: &'w mut dyn FnMut(String),
    ) -> Result<Self, ApplyError> {
        let root = Root::open(target).map_err(sys("/", "opening the image root"))?;
        Ok(Self {
            root,
            limits,
            entries: 0,
            layer_paths: HashSet::new(),
            dir_times: BTreeMap::new(),
            buf: vec![0; 256 * 1024],
            inject: false,
            warn,
        })
    }

    /// Applies one layer's uncompressed tar stream.
    pub fn apply_layer<R: Read>(&mut self, stream: R) -> Result<(), ApplyError> {
        self.layer_paths.clear();
        let mut archive = tar::Archive::new(stream);
        for entry in archive.entries().map_err(ApplyError::Tar)? {
            let mut entry = entry.map_err(ApplyError::Tar)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(ApplyError::TooManyEntries { max: self.limits.max_entries });
            }
            self.apply_entry(&mut entry)?;
        }
        Ok(())
    }

    /// `KEY=VALUE` pairs of the image's os-release (`/etc/os-release`, else
    /// `/usr/lib/os-release`), at most 16 KiB read; empty when there is none.
    pub fn os_release(&self) -> std::collections::BTreeMap<String, String> {
        use std::io::Read as _;
        for p in ["etc/os-release", "usr/lib/os-release"] {
            let Ok(path) = normalize(p.as_bytes(), 64) else { continue };
            let Ok(fd) = self.root.open_regular(&path) else { continue };
            let mut text = String::new();
            if std::fs::File::from(fd).take(16 * 1024).read_to_string(&mut text).is_err() {
                continue;
            }
            return parse_os_release(&text);
        }
        Default::default()
    }

    /// Switches to injection rules for the layers that follow.
    pub fn begin_injection(&mut self) {
        self.inject = true;
        self.root.forbid_symlinks();
    }

    /// Sets every directory's recorded time; call once after the last layer.
    pub fn finish(mut self) -> Result<u64, ApplyError> {
        for (path, t) in std::mem::take(&mut self.dir_times) {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
            let fd = match self.root.resolve(&path, flags) {
                Ok(fd) => fd,
                // Replaced since by a non-directory or removed: nothing to date.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(sys(&path.to_string(), "opening directory")(e)),
            };
            rustix::fs::futimens(&fd, &timestamps(t))
                .map_err(sys(&path.to_string(), "setting directory times"))?;
        }
        Ok(self.entries)
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let max = self.limits.max_path_len as usize;
        let named = |source| ApplyError::Name { path: shown.clone(), source };
        let path = normalize(&raw, max).map_err(named)?;
        let meaning = classify(path).map_err(named)?;
        if self.inject && !matches!(meaning, Meaning::Entry(_)) {
            return Err(ApplyError::Refused {
                path: shown,
                why: "a whiteout among injected files".into(),
            });
        }
        match meaning {
            Meaning::Whiteout(p) => self.whiteout(&p, &shown),
            Meaning::Opaque(dir) => self.opaque(&dir, &shown),
            Meaning::IgnoredMeta(p) => {
                (self.warn)(format!("skipped whiteout metadata entry {p}"));
                Ok(())
            }
            Meaning::Entry(p) => self.create(&p, &shown, entry),
        }
    }

    fn mark_written(&mut self, path: &ImagePath) {
        let mut p = path.clone();
        while self.layer_paths.insert(p.clone()) {
            match p.split() {
                Some((parent, _)) => p = parent,
                None => break,
            }
        }
    }

    fn forget_dir_times(&mut self, path: &ImagePath) {
        let doomed: Vec<ImagePath> = self
            .dir_times
            .range(path.clone()..)
            .take_while(|(k, _)| k.starts_with(path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.dir_times.remove(&k);
        }
    }

    /// Removes `parent/name` (any type) before something else is put there.
    fn clear(
        &mut self,
        parent: &rustix::fd::OwnedFd,
        name: &OsStr,
        path: &ImagePath,
        shown: &str,
    ) -> Result<(), ApplyError> {
        if let Some(st) = lstat_at(parent, name).map_err(sys(shown, "inspecting existing entry"))? {
            if is_dir(&st) {
                self.forget_dir_times(path);
            }
            remove_all(parent, name).map_err(sys(shown, "removing existing entry"))?;
            self.root.invalidate();
        }
        Ok(())
    }

    fn whiteout(&mut self, target: &ImagePath, shown: &str) -> Result<(), ApplyError> {
        if self.layer_paths.contains(target) {
            // A whiteout only hides lower layers, never the layer's own entries.
            return Ok(());
        }
        let Some((dir, name)) = target.split() else {
            return Err(ApplyError::Refused {
                path: shown.into(),
                why: "a whiteout of the root".into(),
            });
        };
        let dirfd = match self.root.dir(&dir) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(sys(shown, "opening whiteout directory")(e)),
        };
        self.clear(&dirfd, name, target, shown)
    }

    fn opaque(&mut self, dir: &ImagePath, shown: &str) -> Result<(), ApplyError> {
        self.mark_written(dir);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        let fd = match self.root.resolve(dir, flags) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                self.root.ensure_dir(dir).map_err(sys(shown, "creating opaque directory"))?;
                return Ok(());
            }
            Err(e) => return Err(sys(shown, "opening opaque directory")(e)),
        };
        self.prune_lower(&fd, dir, shown)?;
        self.root.invalidate();
        Ok(())
    }

    /// Removes everything under `dir` that the current layer did not write.
    fn prune_lower(
        &mut self,
        fd: &rustix::fd::OwnedFd,
        dir: &ImagePath,
        shown: &str,
    ) -> Result<(), ApplyError> {
        for child in root::children(fd).map_err(sys(shown, "listing opaque directory"))? {
            let path = dir.join(&child);
            if self.layer_paths.contains(&path) {
                let st = lstat_at(fd, &child).map_err(sys(shown, "inspecting entry"))?;
                if st.is_some_and(|st| is_dir(&st)) {
                    let flags =
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let sub = rustix::fs::openat(fd, &child, flags, Mode::empty())
                        .map_err(sys(shown, "opening directory"))?;
                    self.prune_lower(&sub, &path, shown)?;
                }
            } else {
                let st = lstat_at(fd, &child).map_err(sys(shown, "inspecting entry"))?;
                if st.is_some_and(|st| is_dir(&st)) {
                    self.forget_dir_times(&path);
                }
                remove_all(fd, &child).map_err(sys(shown, "removing lower-layer entry"))?;
            }
        }
        Ok(())
    }

    fn create<R: Read>(
        &mut self,
        path: &ImagePath,
        shown: &str,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), ApplyError> {
        let pax = match entry.pax_extensions().map_err(ApplyError::Tar)? {
            Some(exts) => {
                let mut recs = Vec::new();
                for r in exts {
                    let r = r.map_err(ApplyError::Tar)?;
                    recs.push((r.key_bytes().to_vec(), r.value_bytes().to_vec()));
                }
                let pairs = recs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
                parse_pax(pairs, &self.limits)
                    .map_err(|source| ApplyError::Meta { path: shown.into(), source })?
            }
            None => Default::default(),
        };
        for key in &pax.ignored {
            (self.warn)(format!("{shown}: PAX record {key} not applied"));
        }
        let header = entry.header().clone();
        let mut meta = read_meta(&header, pax)
            .map_err(|source| ApplyError::Meta { path: shown.into(), source })?;
        if self.inject {
            meta.uid = 0;
            meta.gid = 0;
        }
        meta.xattrs.retain(|(name, _)| {
            let keep = !name.starts_with("trusted.");
            if !keep {
                (self.warn)(format!(
                    "{shown}: dropped xattr {name} (trusted.* is not carried into images)"
                ));
            }
            keep
        });
        self.mark_written(path);

        use tar::EntryType as T;
        let kind = header.entry_type();
        if path.is_root() {
            if kind != T::Directory {
                return Err(ApplyError::Refused {
                    path: shown.into(),
                    why: "a non-directory at the image root".into(),
                });
            }
            let fd = self
                .root
                .resolve(path, OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(sys(shown, "opening root"))?;
            write::set_meta_fd(&fd, &meta, shown)?;
            self.dir_times.insert(path.clone(), meta.mtime);
            return Ok(());
        }
        let Some((parent_path, name)) = path.split() else { return Ok(()) };
        let parent = self.root.ensure_dir(&parent_path).map_err(|e| match e {
            Errno::NOTDIR => ApplyError::Refused {
                path: shown.into(),
                why: "an entry whose parent is not a directory".into(),
            },
            Errno::LOOP | Errno::XDEV if self.inject => ApplyError::Refused {
                path: shown.into(),
                why: "to inject through a symlink the image has on this path".into(),
            },
            e => sys(shown, "creating parent directories")(e),
        })?;
        if self.inject
            && kind != T::Directory
            && lstat_at(&*parent, name)
                .map_err(sys(shown, "inspecting existing entry"))?
                .is_some_and(|st| is_dir(&st))
        {
            return Err(ApplyError::Refused {
                path: shown.into(),
                why: "to inject a file where the image has a directory".into(),
            });
        }
        match kind {
            T::Directory => {
                let existing =
                    lstat_at(&*parent, name).map_err(sys(shown, "inspecting existing entry"))?;
                if self.inject {
                    match existing {
                        // The image's own directory stays exactly as it was.
                        Some(st) if is_dir(&st) => return Ok(()),
                        Some(_) => {
                            return Err(ApplyError::Refused {
                                path: shown.into(),
                                why: "to inject a directory where the image has a non-directory"
                                    .into(),
                            })
                        }
                        None => {}
                    }
                }
                if !existing.is_some_and(|st| is_dir(&st)) {
                    self.clear(&parent, name, path, shown)?;
                    rustix::fs::mkdirat(&*parent, name, Mode::from_raw_mode(0o700))
                        .map_err(sys(shown, "creating directory"))?;
                }
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&*parent, name, flags, Mode::empty())
                    .map_err(sys(shown, "opening directory"))?;
                write::set_meta_fd(&fd, &meta, shown)?;
                self.dir_times.insert(path.clone(), meta.mtime);
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear(&parent, name, path, shown)?;
                let size = entry.size();
                write::regular(&parent, name, entry, size, &meta, &mut self.buf, shown)?;
            }
            T::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| ApplyError::Refused {
                    path: shown.into(),
                    why: "a symlink without a target".into(),
                })?;
                if target.len() > self.limits.max_path_len as usize || target.is_empty() {
                    return Err(ApplyError::Refused {
                        path: shown.into(),
                        why: format!("a symlink target of {} bytes", target.len()),
                    });
                }
                let target = target.into_owned();
                self.clear(&parent, name, path, shown)?;
                write::symlink(&parent, name, &target, &meta, shown, &mut *self.warn)?;
                self.root.invalidate();
            }
            T::Link => self.hardlink(&parent, name, path, shown, entry)?,
            T::Char | T::Block | T::Fifo => {
                let (ftype, dev) = match kind {
                    T::Char | T::Block => {
                        let major = header.device_major().ok().flatten().ok_or_else(|| {
                            ApplyError::Refused {
                                path: shown.into(),
                                why: "a device without a major number".into(),
                            }
                        })?;
                        let minor = header.device_minor().ok().flatten().ok_or_else(|| {
                            ApplyError::Refused {
                                path: shown.into(),
                                why: "a device without a minor number".into(),
                            }
                        })?;
                        let ft = if kind == T::Char {
                            rustix::fs::FileType::CharacterDevice
                        } else {
                            rustix::fs::FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                    _ => (rustix::fs::FileType::Fifo, 0),
                };
                self.clear(&parent, name, path, shown)?;
                write::node(&parent, name, ftype, dev, &meta, shown)?;
            }
            T::XGlobalHeader => {
                (self.warn)(format!("{shown}: skipped a PAX global header"));
            }
            other => {
                return Err(ApplyError::Refused {
                    path: shown.into(),
                    why: format!("unsupported tar entry type {:?}", other.as_byte() as char),
                })
            }
        }
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        parent: &rustix::fd::OwnedFd,
        name: &OsStr,
        path: &ImagePath,
        shown: &str,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), ApplyError> {
        let raw = entry.link_name_bytes().ok_or_else(|| ApplyError::Refused {
            path: shown.into(),
            why: "a hardlink without a target".into(),
        })?;
        let tshown = String::from_utf8_lossy(&raw).into_owned();
        let target = normalize(&raw, self.limits.max_path_len as usize).map_err(|e| {
            ApplyError::Refused {
                path: shown.into(),
                why: format!("hardlink target {tshown:?}: {e}"),
            }
        })?;
        let missing = || ApplyError::Refused {
            path: shown.into(),
            why: format!("a hardlink to {tshown:?}, which does not exist in the image"),
        };
        let Some((tdir, tname)) = target.split() else {
            return Err(ApplyError::Refused {
                path: shown.into(),
                why: "a hardlink to the image root".into(),
            });
        };
        let tparent = match self.root.dir(&tdir) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(missing()),
            Err(e) => return Err(sys(shown, "resolving hardlink target")(e)),
        };
        let tst = lstat_at(&*tparent, tname)
            .map_err(sys(shown, "inspecting hardlink target"))?
            .ok_or_else(missing)?;
        if is_dir(&tst) {
            return Err(ApplyError::Refused {
                path: shown.into(),
                why: format!("a hardlink to directory {tshown:?}"),
            });
        }
        if let Some(st) = lstat_at(parent, name).map_err(sys(shown, "inspecting existing entry"))? {
            if st.st_ino == tst.st_ino && st.st_dev == tst.st_dev {
                return Ok(());
            }
        }
        self.clear(parent, name, path, shown)?;
        rustix::fs::linkat(&*tparent, tname, parent, name, rustix::fs::AtFlags::empty())
            .map_err(sys(shown, "creating hardlink"))
    }
}

/// Parses os-release: `KEY=value`, `KEY="quoted value"`; comments and junk ignored.
pub fn parse_os_release(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once('=') else { continue };
        if k.is_empty()
            || !k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        let v = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(v);
        out.insert(k.to_string(), v.chars().take(256).collect());
    }
    out
}

pub(crate) fn timestamps(t: Time) -> Timestamps {
    let ts = rustix::fs::Timespec { tv_sec: t.sec, tv_nsec: t.nsec.into() };
    Timestamps { last_access: ts, last_modification: ts }
}

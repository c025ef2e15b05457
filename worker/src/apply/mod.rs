//! Layer application: a tar stream applied straight into the mounted image, one pass.
//!
//! Reads layers with [`rootbox_tar`] (as Go's archive/tar reads them), owns the overlay rules
//! ([`overlay`]: whiteouts, opaque directories, type replacement, last-wins duplicates) and
//! the order of metadata writes (content, owner, mode, xattrs, times; directory times last of
//! all). It never resolves a path itself (see [`root`]), and every place where the image will
//! differ from the layers is reported ([`report`]). Privileged calls go through [`ops::Ops`].

mod create;
pub mod data;
mod graveyard;
pub mod meta;
pub mod name;
pub mod ops;
mod overlay;
pub mod report;
mod root;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use rootbox_proto::{Limits, SanitisedKind};
use rustix::fs::{OFlags, Timestamps};
use rustix::io::Errno;

use data::{Data, Writes};
use graveyard::Graveyard;
use meta::MetaError;
pub use meta::Time;
use name::{classify, normalize, ImagePath, Meaning, NameError};
use ops::Ops;
use report::Report;
use root::Root;

/// A failure applying one entry, naming the entry.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{path}")]
    Name {
        path: String,
        #[source]
        source: NameError,
    },
    #[error("{path}")]
    Meta {
        path: String,
        #[source]
        source: MetaError,
    },
    #[error("{path}: refusing {why}")]
    Refused { path: String, why: String },
    /// A hardlink's target is not a name the image can hold.
    #[error("{path}: hardlink target {target}")]
    LinkTarget {
        path: String,
        target: String,
        #[source]
        source: NameError,
    },
    #[error("{path}: {op} failed")]
    Sys {
        path: String,
        op: &'static str,
        #[source]
        errno: std::io::Error,
    },
    /// The layer is not a tar stream every reader reads alike.
    #[error("reading the layer's tar stream")]
    Tar(#[source] rootbox_tar::Error),
    /// The stream ended or failed inside an entry's data.
    #[error("reading the layer's tar stream")]
    Read(#[source] std::io::Error),
    #[error("the image has more than {max} entries (--max-entries)")]
    TooManyEntries { max: u64 },
}

impl ApplyError {
    /// The entry path the error is about, if any.
    pub fn path(&self) -> Option<String> {
        match self {
            Self::Name { path, .. }
            | Self::Meta { path, .. }
            | Self::Refused { path, .. }
            | Self::LinkTarget { path, .. }
            | Self::Sys { path, .. } => Some(path.clone()),
            // A tar refusal names its entry in its own sentence.
            Self::Tar(_) | Self::Read(_) | Self::TooManyEntries { .. } => None,
        }
    }

    /// The sentence and its causes, outermost first, without the path (which the host
    /// shows in its own field).
    pub fn causes(&self) -> Vec<String> {
        let tail = |e: &(dyn std::error::Error + 'static)| crate::session::chain(e);
        match self {
            Self::Name { source, .. } => tail(source),
            Self::Meta { source, .. } => tail(source),
            Self::Refused { why, .. } => vec![format!("refusing {why}")],
            Self::LinkTarget { target, source, .. } => {
                let mut c = vec![format!("hardlink target {target}")];
                c.extend(tail(source));
                c
            }
            Self::Sys { op, errno, .. } => {
                let mut c = vec![format!("{op} failed")];
                c.extend(tail(errno));
                c
            }
            other => tail(other),
        }
    }
}

fn sys<'a>(path: &'a ImagePath, op: &'static str) -> impl FnOnce(Errno) -> ApplyError + 'a {
    move |e| ApplyError::Sys { path: path.to_string(), op, errno: e.into() }
}

fn refused(path: &ImagePath, why: impl Into<String>) -> ApplyError {
    ApplyError::Refused { path: path.to_string(), why: why.into() }
}

/// Open files the applier needs: the removed entries it holds, the directories it keeps
/// open, the stream, and room to spare.
pub const OPEN_FILES: u64 = graveyard::GRAVES as u64 + 512;

/// The largest os-release read.
const OS_RELEASE_MAX: u64 = 16 * 1024;

/// How the current layer touched a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// An entry of the layer names it.
    Explicit,
    /// Only entries below it do: the layer needs it as a directory and says nothing of it.
    Ancestor,
}

/// Applies layers in order into the directory it was opened on.
pub struct Applier<O: Ops> {
    root: Root,
    /// Removed entries, freed at points the layers decide (see [`graveyard`]).
    graves: Graveyard,
    limits: Limits,
    entries: u64,
    /// Paths written by the current layer: what its whiteouts and opaque markers keep.
    layer_paths: HashMap<ImagePath, Written>,
    /// Directory times, applied after every layer so later writes do not disturb them.
    dir_times: BTreeMap<ImagePath, Time>,
    /// The chunk buffer file data passes through, and how it is written.
    data: Data,
    /// Applying injected files: root-owned, never through a symlink, never over a directory.
    inject: bool,
    ops: O,
    /// Where the image differs from the layers, and other warnings.
    pub report: Report,
}

impl<O: Ops> Applier<O> {
    pub fn new(target: &Path, limits: Limits, ops: O) -> Result<Self, ApplyError> {
        let root = Root::open(target).map_err(sys(&ImagePath::root(), "opening the image root"))?;
        let graves =
            Graveyard::open(target).map_err(sys(&ImagePath::root(), "opening the image root"))?;
        Ok(Self {
            root,
            graves,
            limits,
            entries: 0,
            layer_paths: HashMap::new(),
            dir_times: BTreeMap::new(),
            data: Data::new(Writes::Buffered),
            inject: false,
            ops,
            report: Report::default(),
        })
    }

    /// Writes file data as `writes` says (buffered unless told).
    pub fn with_writes(mut self, writes: Writes) -> Self {
        self.data.writes = writes;
        self
    }

    #[cfg(test)]
    pub fn ops(&self) -> &O {
        &self.ops
    }

    /// Applies one layer's uncompressed tar stream; `index` names it in reports.
    pub fn apply_layer<R: Read>(&mut self, index: u32, stream: R) -> Result<(), ApplyError> {
        self.layer_paths.clear();
        self.report.set_layer(index);
        let limits = rootbox_tar::Limits::default();
        let mut archive = rootbox_tar::Archive::with_limits(stream, limits);
        while let Some(member) = archive.next_member().map_err(ApplyError::Tar)? {
            match member {
                rootbox_tar::Member::Global(g) => self.global(&g),
                rootbox_tar::Member::Entry(e) => {
                    self.entries += 1;
                    if self.entries > self.limits.max_entries {
                        return Err(ApplyError::TooManyEntries { max: self.limits.max_entries });
                    }
                    self.apply_entry(&e, &mut archive.data())?;
                }
            }
        }
        Ok(())
    }

    /// A PAX global header: nothing is created, and records that would change entries under
    /// GNU tar (it applies them) but not under docker (it ignores them) are reported.
    fn global(&mut self, g: &rootbox_tar::Global) {
        let keys: Vec<String> = g
            .records
            .keys()
            .filter(|k| !matches!(k.as_slice(), b"comment" | b"charset" | b"hdrcharset"))
            .map(|k| rootbox_tar::shown(k))
            .collect();
        if !keys.is_empty() {
            self.report.sanitised(
                None,
                SanitisedKind::GlobalHeader,
                format!("PAX global header at byte {}: {}", g.offset, keys.join(", ")),
                "global headers are not applied to the entries after them, as docker and \
                 containerd read layers (GNU tar would apply them)",
            );
        }
    }

    /// `KEY=VALUE` pairs of the image's os-release (`/etc/os-release`, else
    /// `/usr/lib/os-release`), at most 16 KiB read; empty when there is none.
    pub fn os_release(&self) -> BTreeMap<String, String> {
        for p in ["etc/os-release", "usr/lib/os-release"] {
            let Ok(path) = normalize(p.as_bytes(), 64) else { continue };
            let Ok(fd) = self.root.open_regular(&path, OS_RELEASE_MAX) else { continue };
            let mut text = String::new();
            if std::fs::File::from(fd).take(OS_RELEASE_MAX).read_to_string(&mut text).is_err() {
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

    /// Frees the removed entries still held and sets every directory's recorded time; call
    /// once after the last layer. Returns the number of entries applied.
    pub fn finish(&mut self) -> Result<u64, ApplyError> {
        self.graves.release().map_err(sys(&ImagePath::root(), "freeing removed entries"))?;
        for (path, t) in std::mem::take(&mut self.dir_times) {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
            let fd = match self.root.resolve(&path, flags) {
                Ok(fd) => fd,
                // Replaced since by a non-directory or removed: nothing to date.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(sys(&path, "opening directory")(e)),
            };
            rustix::fs::futimens(&fd, &timestamps(t))
                .map_err(sys(&path, "setting directory times"))?;
        }
        Ok(self.entries)
    }

    fn apply_entry(
        &mut self,
        entry: &rootbox_tar::Entry,
        data: &mut dyn Read,
    ) -> Result<(), ApplyError> {
        let max = self.limits.max_path_len as usize;
        let shown = || String::from_utf8_lossy(&entry.name).into_owned();
        let named = |source| ApplyError::Name { path: shown(), source };
        let path = normalize(&entry.name, max).map_err(named)?;
        let meaning = classify(path).map_err(named)?;
        if self.inject && !matches!(meaning, Meaning::Entry(_)) {
            return Err(ApplyError::Refused {
                path: shown(),
                why: "a whiteout among injected files".into(),
            });
        }
        match meaning {
            Meaning::Whiteout(p) => self.whiteout(&p),
            Meaning::Opaque(dir) => self.opaque(&dir),
            Meaning::IgnoredMeta(p) => {
                self.report.sanitised(
                    Some(&p),
                    SanitisedKind::WhiteoutMeta,
                    "whiteout meta file",
                    "only the opaque marker .wh..wh..opq means something in OCI layers",
                );
                Ok(())
            }
            Meaning::Entry(p) => self.create(&p, entry, data),
        }
    }
}

/// Parses os-release: `KEY=value`, `KEY="quoted value"`; comments and junk ignored.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
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

#[cfg(test)]
mod refusals;
#[cfg(test)]
mod rules;

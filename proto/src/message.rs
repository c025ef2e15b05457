//! Control messages, serialised as JSON in control frames.
//!
//! Compatibility rule: new fields are `Option` or carry `#[serde(default)]`; variants and frame
//! kinds are never renumbered or renamed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text;

/// Bumped on any incompatible change to frames or messages.
pub const PROTOCOL_VERSION: u32 = 4;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    #[serde(default)]
    pub features: Vec<String>,
}

/// How the worker sizes the finished filesystem.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum SizePolicy {
    /// Shrink to the minimum resize2fs can reach, plus `headroom_pct` percent.
    Auto { headroom_pct: u32 },
    /// Exactly this many bytes (a multiple of 4096), or an error naming the minimum.
    Exact { bytes: u64 },
}

/// Bounds the worker enforces on untrusted layer content.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Total uncompressed layer bytes, all layers together.
    pub max_total_bytes: u64,
    /// Tar entries, all layers together.
    pub max_entries: u64,
    /// Bytes in one entry path or link target.
    pub max_path_len: u32,
    /// Bytes in one xattr value.
    pub max_xattr_value: u32,
    /// Bytes of all xattrs (names + values) on one entry.
    pub max_xattr_total: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_path_len: 4096,
            max_xattr_value: 64 * 1024,
            max_xattr_total: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerSpec {
    /// The layer's name in messages: its blob digest, or the source for a flat tar.
    pub digest: String,
}

/// What the host asks the worker to build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobSpec {
    /// The image reference, for messages only.
    pub image: String,
    pub layers: Vec<LayerSpec>,
    pub size: SizePolicy,
    pub limits: Limits,
    /// Filesystem label (`mke2fs -L`).
    #[serde(default)]
    pub label: Option<String>,
    /// Total uncompressed layer bytes, when the host knows it; sizes the journal.
    #[serde(default)]
    pub content_hint: u64,
    /// One more layer follows the image's: files to inject (guest agent, assets), applied
    /// owned by root, never through a symlink, never replacing a directory.
    #[serde(default)]
    pub inject: bool,
    /// What the build takes from its inputs instead of from chance or the clock, so that the
    /// same inputs give the same bytes. `None`: mke2fs's random UUID and the clock.
    #[serde(default)]
    pub identity: Option<Identity>,
}

/// The values a reproducible build fixes, derived by the host from the build's inputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// The filesystem UUID (`mke2fs -U`), hyphenated lower-case hex.
    pub uuid: String,
    /// The directory hash seed (`mke2fs -E hash_seed=`), hyphenated lower-case hex.
    pub hash_seed: String,
    /// Seconds since 1970-01-01 UTC: every time the build would otherwise take from the
    /// clock (superblock times, inode change and creation times).
    pub epoch: u64,
    /// Run the canonicalising pass after the shrink (inode generations and times, the
    /// journal, superblock counters, free blocks). Off only to show what it fixes.
    #[serde(default = "yes")]
    pub canonicalise: bool,
}

fn yes() -> bool {
    true
}

/// Worker phases, reported as progress and timed in the result.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Mkfs,
    Apply,
    Inject,
    Fsck,
    Shrink,
    /// The canonicalising pass of a reproducible build.
    Canonicalise,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mkfs => "mkfs",
            Self::Apply => "apply",
            Self::Inject => "inject",
            Self::Fsck => "fsck",
            Self::Shrink => "shrink",
            Self::Canonicalise => "canonicalise",
        })
    }
}

/// The classes of change a sanitisation record reports; `what` and `why` give the detail.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SanitisedKind {
    /// An xattr not written (`trusted.*`, a namespace ext4 refuses, one on a symlink).
    Xattr,
    /// A device node not created: its numbers do not fit a Linux `dev_t`.
    Device,
    /// A time outside what ext4 stores, clamped by the kernel.
    Time,
    /// A PAX record rootbox does not apply (`LIBARCHIVE.xattr.*`, `SCHILY.acl.*`...).
    PaxRecord,
    /// PAX global header records, never applied (docker and containerd ignore them).
    GlobalHeader,
    /// An aufs whiteout meta file (`.wh..wh.*` other than the opaque marker), skipped.
    WhiteoutMeta,
}

impl SanitisedKind {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Xattr => "xattrs not written",
            Self::Device => "devices not created",
            Self::Time => "times clamped",
            Self::PaxRecord => "PAX records not applied",
            Self::GlobalHeader => "PAX global headers not applied",
            Self::WhiteoutMeta => "whiteout meta files skipped",
        }
    }
}

/// One place where the ext4 differs from what the layers say, because the worker refused,
/// dropped or clamped something. Sent as the applier meets it (the first
/// [`SANITISED_MAX`] of a job); the result carries the counts of all.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sanitised {
    /// The layer's index in the job (0-based); `layers.len()` is the injected files.
    pub layer: u32,
    /// The entry's path in the image.
    pub path: String,
    pub kind: SanitisedKind,
    /// What was changed, e.g. `xattr trusted.overlay.opaque`.
    pub what: String,
    /// Why, in words a user can act on.
    pub why: String,
}

/// Most sanitisation records a job reports one by one (both sides enforce it).
pub const SANITISED_MAX: usize = 1000;

/// The finished filesystem, as the worker measured it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobResult {
    /// Final size of the filesystem; the host truncates the output file to this.
    pub size_bytes: u64,
    /// Bytes in use (blocks in use × block size).
    pub used_bytes: u64,
    /// Inodes in use.
    pub inodes: u64,
    /// Entries applied, all layers together.
    pub entries: u64,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Milliseconds spent per phase.
    #[serde(default)]
    pub phase_ms: Vec<(Phase, u64)>,
    /// `ID`, `VERSION_ID`, `PRETTY_NAME`... from the image's os-release, when it has one.
    #[serde(default)]
    pub os_release: std::collections::BTreeMap<String, String>,
    /// Sanitisation records of the whole job by kind, beyond the first [`SANITISED_MAX`] too.
    #[serde(default)]
    pub sanitised: std::collections::BTreeMap<SanitisedKind, u64>,
}

/// A failure inside the worker, structured so the host prints one actionable sentence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteError {
    /// What the worker was doing ("applying layer", "creating filesystem", ...).
    pub operation: String,
    #[serde(default)]
    pub layer: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// The error and its sources, outermost first.
    #[serde(default)]
    pub causes: Vec<String>,
    /// The failure is the sandbox's or rootbox's own (a process killed from outside, a
    /// system call refused), not the image's: the host exits 1, not 4.
    #[serde(default)]
    pub internal: bool,
}

/// Bytes of a path kept in an error, causes kept, and bytes of each: an error always fits a
/// control frame, whatever name it is about.
const PATH_SHOWN: usize = 512;
const CAUSES_MAX: usize = 16;
const CAUSE_SHOWN: usize = 2048;

impl RemoteError {
    /// The error cut to what is worth showing (long paths and causes keep their first and
    /// last bytes and their length): what the worker sends, and what the host keeps of it.
    pub fn bounded(mut self) -> RemoteError {
        let cut = |s: &mut String, max: usize| {
            if s.len() > max {
                *s = text::shortened(s, max).into_owned();
            }
        };
        cut(&mut self.operation, CAUSE_SHOWN);
        if let Some(l) = self.layer.as_mut() {
            cut(l, CAUSE_SHOWN);
        }
        if let Some(p) = self.path.as_mut() {
            cut(p, PATH_SHOWN);
        }
        if self.causes.len() > CAUSES_MAX {
            let dropped = self.causes.len() - CAUSES_MAX;
            self.causes.truncate(CAUSES_MAX);
            self.causes.push(format!("({dropped} more causes)"));
        }
        for c in &mut self.causes {
            cut(c, CAUSE_SHOWN);
        }
        self
    }
}

impl fmt::Display for RemoteError {
    /// One line, whatever the worker put in it: control characters (newlines included)
    /// escaped, long fields shortened.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show =
            |s: &str, max: usize| text::printable(&text::shortened(s, max), false).into_owned();
        f.write_str(&show(&self.operation, CAUSE_SHOWN))?;
        if let Some(layer) = &self.layer {
            write!(f, " (layer {}", show(layer, CAUSE_SHOWN))?;
            match &self.path {
                Some(p) => write!(f, ", path \"{}\")", show(p, PATH_SHOWN))?,
                None => f.write_str(")")?,
            }
        } else if let Some(p) = &self.path {
            write!(f, " (path \"{}\")", show(p, PATH_SHOWN))?;
        }
        for c in self.causes.iter().take(CAUSES_MAX + 1) {
            write!(f, ": {}", show(c, CAUSE_SHOWN))?;
        }
        Ok(())
    }
}

impl std::error::Error for RemoteError {}

/// Every control message, both directions. The `type` field names the variant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// First message each way; the worker answers the host's with its own.
    Hello(Hello),
    /// host → worker: the job, once, after hello.
    Job(JobSpec),
    /// host → worker: data frames of layer `index`'s uncompressed tar follow.
    LayerBegin { index: u32 },
    /// host → worker: layer `index` is complete: `bytes` were shipped, and the host checked
    /// their diff_id before sending this.
    LayerEnd { index: u32, bytes: u64 },
    /// host → worker: all layers shipped; finish the filesystem.
    Finish,
    /// host → worker: stop now, the job failed on the host side.
    Abort { reason: String },
    /// worker → host: the worker entered `phase` (layer index while applying).
    Progress {
        phase: Phase,
        #[serde(default)]
        layer: Option<u32>,
    },
    /// worker → host: something not about the image's content; the job continues.
    Warning { message: String },
    /// worker → host: the ext4 differs from the layers here (see [`Sanitised`]).
    Sanitised(Sanitised),
    /// worker → host: success.
    Done(JobResult),
    /// worker → host: failure.
    Error(RemoteError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_stable() {
        let j = serde_json::to_string(&Control::LayerBegin { index: 3 }).unwrap();
        assert_eq!(j, r#"{"type":"layer_begin","index":3}"#);
        let j = serde_json::to_string(&SizePolicy::Exact { bytes: 4096 }).unwrap();
        assert_eq!(j, r#"{"mode":"exact","bytes":4096}"#);
        let j = serde_json::to_string(&Control::Finish).unwrap();
        assert_eq!(j, r#"{"type":"finish"}"#);
    }

    #[test]
    fn unknown_optional_fields_default() {
        let c: Control = serde_json::from_str(r#"{"type":"error","operation":"x"}"#).unwrap();
        assert_eq!(
            c,
            Control::Error(RemoteError {
                operation: "x".into(),
                layer: None,
                path: None,
                causes: vec![],
                internal: false,
            })
        );
    }

    #[test]
    fn a_remote_error_always_fits_a_frame_and_one_line() {
        let huge = RemoteError {
            operation: "applying layer 1 of 1".into(),
            layer: Some("sha256:ab".into()),
            path: Some(format!("/{}\u{1b}[31m\nfake line", "n".repeat(1 << 20))),
            causes: (0..100).map(|i| format!("cause {i} {}", "c".repeat(10_000))).collect(),
            internal: false,
        };
        let b = huge.bounded();
        let json = serde_json::to_vec(&Control::Error(b.clone())).expect("json");
        assert!(json.len() < crate::CONTROL_MAX as usize, "{} bytes", json.len());
        assert!(b.path.as_deref().is_some_and(|p| p.ends_with("(1048592 bytes)")), "{:?}", b.path);
        let line = b.to_string();
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "one escaped line");
        assert!(line.contains("(84 more causes)"), "{}", &line[line.len() - 200..]);
    }

    #[test]
    fn remote_error_reads_as_one_sentence() {
        let e = RemoteError {
            operation: "applying layer 2 of docker.io/x".into(),
            layer: Some("sha256:ab".into()),
            path: Some("etc/passwd".into()),
            causes: vec!["refusing hardlink outside the image".into()],
            internal: false,
        };
        assert_eq!(
            e.to_string(),
            "applying layer 2 of docker.io/x (layer sha256:ab, path \"etc/passwd\"): refusing hardlink outside the image"
        );
    }
}

//! Image sources: where layers come from, resolved into a verified plan.
//!
//! A source names an image in skopeo's transport syntax and resolves it to an [`Image`]: the
//! layers in order, each with the digests it must match. Sources read only JSON documents and
//! blob locations; layer bytes are read later, by [`verify`] and [`crate::ship`], and only as bytes.

mod docker_archive;
mod oci_layout;
pub mod registry;
mod rootfs_tar;
pub mod verify;

/// The OCI and docker document shapes, and opening local files safely, live beside the
/// sources (the blob cache needs them too); sources name them as their own.
pub(crate) use crate::local;
pub(crate) use crate::oci as spec;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::Digest;
use spec::{Compression, PlatformSpec};

/// Everything wrong with a source itself (exit code 3).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown source {0:?}: use oci:DIR[:TAG], docker-archive:FILE, rootfs-tar:FILE|-, docker://REFERENCE or a bare reference (debian:bookworm)")]
    Syntax(String),
    #[error("{what} not found at {path}")]
    Missing { what: String, path: PathBuf },
    #[error("reading {what} ({path})")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} is not valid JSON of the expected shape")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} is larger than {max} bytes")]
    TooLarge { what: String, max: u64 },
    #[error("{what}: digest mismatch: expected {expected}, content is {actual}")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("{what}: uncompressed content {actual} does not match diff_id {expected} in the image config")]
    DiffIdMismatch { what: String, expected: Digest, actual: Digest },
    #[error("{what}: size mismatch: descriptor says {expected} bytes, blob has {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("{what}: unsupported media type {media_type:?} (rootbox applies tar, tar+gzip and tar+zstd layers)")]
    MediaType { what: String, media_type: String },
    #[error("{what}: decompressing failed")]
    Decompress {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("uncompressed layers exceed the {limit}-byte limit (--max-uncompressed) at {what}")]
    Limit { what: String, limit: u64 },
    #[error("{0}")]
    Invalid(String),
    /// As `Invalid`, when another error says why (a tar reader's refusal, a failed call).
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: BoxError,
    },
    /// A registry request failed for good (after `attempts` tries when the failure was
    /// transient).
    #[error("registry {registry}, repository {repository}: {what}{}", gave_up(*.attempts))]
    Registry {
        registry: String,
        repository: String,
        what: String,
        attempts: u32,
        #[source]
        source: BoxError,
    },
    #[error("registry {registry} refused access to repository {repository} {origin}; give credentials with --creds USER:PASS or an auth file ($REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json)")]
    Denied { registry: String, repository: String, origin: String },
    #[error("the blob cache")]
    Cache(#[source] crate::cache::CacheError),
}

pub type Result<T> = std::result::Result<T, SourceError>;

/// A cause kept as itself, of whatever type (a library's error, or a message).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn gave_up(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

/// Where a blob's bytes live.
#[derive(Debug, Clone)]
pub enum BlobLocation {
    /// `len` bytes at `offset` of a file (a whole blob file, or a member of a tarball).
    File { path: PathBuf, offset: u64, len: u64 },
    /// `len` bytes at `offset` of a local source's file, opened once (safely: see
    /// [`local`]) when the source was resolved; `path` names it in messages.
    Opened { file: Arc<File>, path: PathBuf, offset: u64, len: u64 },
    /// An unlinked temp file holding spooled input (stdin).
    Spooled { file: Arc<File>, len: u64 },
}

impl BlobLocation {
    pub fn len(&self) -> u64 {
        match self {
            Self::File { len, .. } | Self::Opened { len, .. } | Self::Spooled { len, .. } => *len,
        }
    }

    /// Fills `buf` from `at` bytes into the blob (all of it must lie within the blob).
    pub fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if at.saturating_add(buf.len() as u64) > self.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match self {
            Self::File { path, offset, .. } => File::open(path)?.read_exact_at(buf, offset + at),
            Self::Opened { file, offset, .. } => file.read_exact_at(buf, offset + at),
            Self::Spooled { file, .. } => file.read_exact_at(buf, at),
        }
    }

    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        match self {
            Self::File { path, offset, len } => {
                let mut f = File::open(path)?;
                f.seek(SeekFrom::Start(*offset))?;
                Ok(Box::new(io::BufReader::with_capacity(1 << 20, f.take(*len))))
            }
            Self::Opened { file, offset, len, .. } => Ok(Box::new(io::BufReader::with_capacity(
                1 << 20,
                local::At::new(file.clone(), *offset, *len),
            ))),
            // Read at offsets: a dup of the file would share one position with every other
            // reader of the blob (its check runs beside its shipping).
            Self::Spooled { file, len } => Ok(Box::new(io::BufReader::with_capacity(
                1 << 20,
                local::At::new(file.clone(), 0, *len),
            ))),
        }
    }
}

/// How a layer's compression is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionHint {
    /// From the media type.
    Known(Compression),
    /// No media type (docker-archive, flat tar): look at the first bytes.
    Sniff,
}

#[derive(Debug, Clone)]
pub struct Layer {
    /// The layer's name in messages and in `--json`: its blob digest (for a flat tar, the
    /// digest of the tar as read).
    pub digest: Digest,
    /// Check the blob's bytes against `digest` (false when the digest was computed by us).
    pub verify_digest: bool,
    /// The config's `rootfs.diff_ids` entry, when the source has a config.
    pub diff_id: Option<Digest>,
    pub compression: CompressionHint,
    pub blob: BlobLocation,
}

/// A resolved image: what will be built.
#[derive(Debug, Clone)]
pub struct Image {
    /// The source as the user named it, for messages.
    pub name: String,
    /// The manifest digest (or the flat tar's digest).
    pub digest: Digest,
    pub layers: Vec<Layer>,
}

/// A place images come from.
pub trait Source: Send + Sync {
    /// Resolves the image for `platform`, reading and checking its JSON documents.
    fn resolve(&self, platform: &PlatformSpec) -> Result<Image>;

    /// Makes a layer's blob readable at its location (a registry downloads it into the
    /// cache). `label` names the layer in progress lines. A source that checked the layer's
    /// digest, size and diff_id (within `limit` uncompressed bytes) while fetching it says
    /// what it found, sparing the verification pass. Local sources have nothing to do.
    fn fetch(&self, _layer: &Layer, _label: &str, _limit: u64) -> Result<Option<verify::Verified>> {
        Ok(None)
    }

    /// The layer's blob failed verification: drops it so that `fetch` gets it again. False
    /// when fetching again cannot help (the blob is the source itself).
    fn discard(&self, _layer: &Layer) -> bool {
        false
    }

    /// Layers arrive over time (downloads): the build starts before all are verified, on a
    /// scratch file sized from the compressed sizes and `--max-uncompressed`.
    fn remote(&self) -> bool {
        false
    }
}

/// Transports skopeo knows that rootbox does not read: never taken for a bare reference.
const OTHER_TRANSPORTS: &[&str] = &[
    "oci-archive",
    "docker-daemon",
    "containers-storage",
    "dir",
    "docker",
    "ostree",
    "sif",
    "tarball",
];

/// Parses a source, registry references included (`docker://REF`, or a bare `REF` with
/// docker's defaults).
pub fn open(
    s: &str,
    opts: &registry::Options,
    progress: &crate::progress::Progress,
) -> Result<Box<dyn Source>> {
    if let Some(rest) = s.strip_prefix("docker://") {
        return Ok(Box::new(registry::Registry::parse(rest, s, opts, progress)?));
    }
    match parse(s) {
        Err(SourceError::Syntax(_)) => {}
        other => return other,
    }
    let transport = s.split_once(':').map(|(t, _)| t);
    if transport.is_some_and(|t| OTHER_TRANSPORTS.contains(&t)) || s.contains("://") {
        return Err(SourceError::Syntax(s.to_string()));
    }
    registry::Registry::parse(s, s, opts, progress)
        .map(|r| Box::new(r) as Box<dyn Source>)
        .map_err(|_| SourceError::Syntax(s.to_string()))
}

/// Parses skopeo-style `TRANSPORT:DETAILS` for the local transports.
pub fn parse(s: &str) -> Result<Box<dyn Source>> {
    if let Some(rest) = s.strip_prefix("oci:") {
        return Ok(Box::new(oci_layout::OciLayout::parse(rest, s)));
    }
    if let Some(rest) = s.strip_prefix("docker-archive:") {
        return Ok(Box::new(docker_archive::DockerArchive::new(PathBuf::from(rest), s)));
    }
    if let Some(rest) = s.strip_prefix("rootfs-tar:") {
        return Ok(Box::new(rootfs_tar::RootfsTar::new(rest, s)));
    }
    Err(SourceError::Syntax(s.to_string()))
}

pub fn read_bounded(r: impl Read, what: &str, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    r.take(spec::JSON_MAX + 1).read_to_end(&mut bytes).map_err(|e| SourceError::Io {
        what: what.into(),
        path: path.into(),
        source: e,
    })?;
    if bytes.len() as u64 > spec::JSON_MAX {
        return Err(SourceError::TooLarge { what: what.into(), max: spec::JSON_MAX });
    }
    Ok(bytes)
}

/// Checks layers against the config's diff_ids (count) and returns them paired.
pub fn pair_diff_ids(what: &str, n_layers: usize, config: &spec::Config) -> Result<Vec<Digest>> {
    if config.rootfs.kind != "layers" {
        return Err(SourceError::Invalid(format!(
            "{what}: rootfs type {:?} is not \"layers\"",
            config.rootfs.kind
        )));
    }
    if config.rootfs.diff_ids.len() != n_layers {
        return Err(SourceError::Invalid(format!(
            "{what}: the manifest lists {n_layers} layers but the config has {} diff_ids",
            config.rootfs.diff_ids.len()
        )));
    }
    Ok(config.rootfs.diff_ids.clone())
}

/// Checks a small blob read whole (a manifest, index or config) against its descriptor.
pub fn check_blob(what: &str, desc: &spec::Descriptor, bytes: &[u8]) -> Result<()> {
    let actual = Digest::of(bytes);
    if actual != desc.digest {
        return Err(SourceError::DigestMismatch {
            what: what.into(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != desc.size {
        return Err(SourceError::SizeMismatch {
            what: what.into(),
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    Ok(())
}

/// The index entry for `platform`, or an error listing what the index offers.
pub fn select_platform(
    name: &str,
    index: &spec::Index,
    platform: &PlatformSpec,
) -> Result<spec::Descriptor> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .cloned()
        .ok_or_else(|| {
            let offered: Vec<String> =
                index.manifests.iter().map(|d| spec::describe_platform(&d.platform)).collect();
            SourceError::Invalid(format!(
                "{name}: no manifest for {platform}; the index offers {}",
                offered.join(", ")
            ))
        })
}

/// The layers a manifest and its config describe, after checking the config's platform,
/// its diff_id count and every layer's media type. `locate` says where each blob lives.
pub fn manifest_layers(
    name: &str,
    platform: &PlatformSpec,
    manifest: &spec::Manifest,
    config: &spec::Config,
    mut locate: impl FnMut(&spec::Descriptor, &str) -> Result<BlobLocation>,
) -> Result<Vec<Layer>> {
    check_platform(name, platform, config)?;
    let diff_ids = pair_diff_ids(name, manifest.layers.len(), config)?;
    let mut layers = Vec::new();
    for (i, (d, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let what = format!("{name} layer {} ({})", i + 1, d.digest);
        let compression = spec::layer_compression(&d.media_type).ok_or_else(|| {
            SourceError::MediaType { what: what.clone(), media_type: d.media_type.clone() }
        })?;
        layers.push(Layer {
            digest: d.digest.clone(),
            verify_digest: true,
            diff_id: Some(diff_id),
            compression: CompressionHint::Known(compression),
            blob: locate(d, &what)?,
        });
    }
    Ok(layers)
}

pub fn check_platform(what: &str, platform: &PlatformSpec, config: &spec::Config) -> Result<()> {
    if platform.matches_config(config) {
        return Ok(());
    }
    Err(SourceError::Invalid(format!(
        "{what} is for {}/{}, not {platform} (choose with --platform)",
        config.os.as_deref().unwrap_or("?"),
        config.architecture.as_deref().unwrap_or("?")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two readers of one blob, read in turns (a blob's check runs beside its shipping),
    /// each see the whole blob from its first byte, whatever kind of location it is.
    #[test]
    fn readers_of_one_blob_do_not_share_a_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let path = dir.path().join("blob");
        std::fs::write(&path, &data).expect("write");
        let file = Arc::new(File::open(&path).expect("open"));
        let len = data.len() as u64;
        let locations = [
            BlobLocation::File { path: path.clone(), offset: 0, len },
            BlobLocation::Opened { file: file.clone(), path: path.clone(), offset: 0, len },
            BlobLocation::Spooled { file, len },
        ];
        for loc in locations {
            let (mut a, mut b) = (loc.open().expect("open a"), loc.open().expect("open b"));
            let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
            let mut buf = vec![0u8; 100_000];
            loop {
                let n = a.read(&mut buf).expect("read a");
                got_a.extend_from_slice(&buf[..n]);
                let m = b.read(&mut buf).expect("read b");
                got_b.extend_from_slice(&buf[..m]);
                if n == 0 && m == 0 {
                    break;
                }
            }
            assert!(got_a == data && got_b == data, "{loc:?}: a reader saw the other's reads");
        }
    }
}

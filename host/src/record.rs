//! The build record (`pull --record FILE`, and the `record` field of `--json`): what a build
//! took and gave, enough to rebuild it (`rootbox verify`) and to say what changed when the
//! rebuild differs. Its format is versioned (`record_version`); a reader refuses a version it
//! does not know rather than guess. Written atomically: a temp file beside the target,
//! renamed over it, so a reader never sees half a record.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// The version this rootbox writes and the only one it reads.
pub const VERSION: u64 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub record_version: u64,
    pub rootbox_version: String,
    /// The source exactly as it was given (`oci:./img:tag`, `debian:bookworm`).
    pub source: String,
    /// The manifest digest, or a flat tar's sha256.
    pub image_digest: Digest,
    /// The layers' digests, in order.
    pub layers: Vec<Digest>,
    /// `--platform`.
    pub platform: String,
    /// The sandbox the build ran in.
    pub isolation: Isolation,
    /// sha256 over what of the worker image that sandbox runs (see
    /// `worker_image::WorkerImage::digest`).
    pub worker_image_digest: Digest,
    /// `uname -r` of the host, for the container sandbox (its worker runs on the host's
    /// kernel, whose ext4 code writes the image); null for the microVM (its kernel is part of
    /// the worker image).
    pub host_kernel: Option<String>,
    pub options: Options,
    pub identity: Identity,
    /// The output's sha256 and size.
    pub sha256: Digest,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Isolation {
    /// `container` or `vm`.
    pub sandbox: String,
    /// The microVM's VMM (`qemu`, `firecracker`), null for the container.
    pub vmm: Option<String>,
    /// The microVM's accelerator (`kvm`, `tcg`), null for the container.
    pub accel: Option<String>,
}

/// `--size`: `"auto"` or `{"exact": BYTES}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Auto,
    Exact(u64),
}

/// The options that change the output bytes, and the limits a rebuild needs to succeed
/// where the build did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Options {
    pub size: Size,
    /// `--headroom` (it matters only with `--size auto`).
    pub headroom: u32,
    pub label: String,
    /// sha256 of the injected files' tar; null when nothing was injected.
    pub injected_digest: Option<Digest>,
    pub no_default_assets: bool,
    /// `--inject DIR` as given.
    pub inject: Option<PathBuf>,
    /// `$SOURCE_DATE_EPOCH`, else 0.
    pub epoch: u64,
    /// false with `--no-canonicalise`.
    pub canonicalise: bool,
    /// `--max-uncompressed`: it caps the journal's content hint, so it can change the bytes
    /// of an image whose 4 × compressed size exceeds it.
    pub max_uncompressed: u64,
    /// `--max-entries`: changes no byte, but a rebuild under a lower limit would fail.
    pub max_entries: u64,
}

/// What the worker was given (`rootbox_proto::Identity` without the pass switch, which
/// `options.canonicalise` records).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub uuid: String,
    pub hash_seed: String,
    pub epoch: u64,
}

impl From<&rootbox_proto::Identity> for Identity {
    fn from(i: &rootbox_proto::Identity) -> Self {
        Identity { uuid: i.uuid.clone(), hash_seed: i.hash_seed.clone(), epoch: i.epoch }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("reading the build record {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the build record {path} is not a record of the expected shape")]
    Shape {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A record of a version this rootbox does not read.
    #[error("the build record {path} has record_version {found}; this rootbox ({}) reads version {VERSION} only", env!("CARGO_PKG_VERSION"))]
    Version { path: PathBuf, found: String },
    #[error("writing the build record {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RecordError {
    /// The record given cannot be used (missing, malformed, another version): a usage error,
    /// unlike failing to write one.
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::Write { .. })
    }
}

/// Reads a record, refusing any `record_version` but [`VERSION`] before looking at the rest.
pub fn read(path: &Path) -> Result<Record, RecordError> {
    let bytes =
        std::fs::read(path).map_err(|source| RecordError::Read { path: path.into(), source })?;
    parse(&bytes, path)
}

fn parse(bytes: &[u8], path: &Path) -> Result<Record, RecordError> {
    let shape = |source| RecordError::Shape { path: path.into(), source };
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(shape)?;
    match v.get("record_version") {
        Some(n) if n.as_u64() == Some(VERSION) => {}
        Some(other) => {
            return Err(RecordError::Version { path: path.into(), found: other.to_string() })
        }
        None => return Err(RecordError::Version { path: path.into(), found: "missing".into() }),
    }
    serde_json::from_value(v).map_err(shape)
}

/// Writes `record` to `path`: into a temp file beside it, synced, then renamed over it.
pub fn write(record: &Record, path: &Path) -> Result<(), RecordError> {
    let err = |source| RecordError::Write { path: path.into(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    let mut json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other).map_err(err)?;
    json.push(b'\n');
    temp.write_all(&json).map_err(err)?;
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    temp.as_file().set_permissions(perms).map_err(err)?;
    temp.as_file().sync_all().map_err(err)?;
    temp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// One field whose value differs between a record and its rebuild.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub record: String,
    pub now: String,
}

/// The fields outside the image's bytes that can explain a different output: the
/// environment (worker image, host kernel, rootbox version, sandbox) and the inputs a source
/// can change under the same name (a tag moved, an `--inject` tree edited).
pub fn differences(then: &Record, now: &Record) -> Vec<Difference> {
    fn opt(s: &Option<impl ToString>) -> String {
        s.as_ref().map_or_else(|| "none".to_string(), |s| s.to_string())
    }
    let list = |l: &[Digest]| l.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
    let iso = |i: &Isolation| {
        [Some(i.sandbox.clone()), i.vmm.clone(), i.accel.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let fields = [
        (
            "worker_image_digest",
            then.worker_image_digest.to_string(),
            now.worker_image_digest.to_string(),
        ),
        ("host_kernel", opt(&then.host_kernel), opt(&now.host_kernel)),
        ("rootbox_version", then.rootbox_version.clone(), now.rootbox_version.clone()),
        ("isolation", iso(&then.isolation), iso(&now.isolation)),
        ("image_digest", then.image_digest.to_string(), now.image_digest.to_string()),
        ("layers", list(&then.layers), list(&now.layers)),
        (
            "options.injected_digest",
            opt(&then.options.injected_digest),
            opt(&now.options.injected_digest),
        ),
        ("identity.uuid", then.identity.uuid.clone(), now.identity.uuid.clone()),
    ];
    fields
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(field, record, now)| Difference { field, record, now })
        .collect()
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn sample() -> Record {
        Record {
            record_version: VERSION,
            rootbox_version: "0.1.0".into(),
            source: "oci:./img:tag".into(),
            image_digest: Digest::of(b"manifest"),
            layers: vec![Digest::of(b"l1"), Digest::of(b"l2")],
            platform: "linux/amd64".into(),
            isolation: Isolation { sandbox: "container".into(), vmm: None, accel: None },
            worker_image_digest: Digest::of(b"worker"),
            host_kernel: Some("6.1.0".into()),
            options: Options {
                size: Size::Auto,
                headroom: 20,
                label: "rootfs".into(),
                injected_digest: None,
                no_default_assets: true,
                inject: None,
                epoch: 0,
                canonicalise: true,
                max_uncompressed: 64 << 30,
                max_entries: 4_000_000,
            },
            identity: Identity { uuid: "u".into(), hash_seed: "s".into(), epoch: 0 },
            sha256: Digest::of(b"out"),
            size_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_record_round_trips_and_is_written_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("build.json");
        let mut r = sample();
        r.options.size = Size::Exact(4 << 30);
        write(&r, &p).unwrap();
        assert_eq!(read(&p).unwrap(), r);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["options"]["size"]["exact"], 4u64 << 30);
        assert_eq!(v["record_version"], 1);
        // Written again over itself: still one file, no temp left beside it.
        write(&sample(), &p).unwrap();
        let names: Vec<_> =
            std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["build.json"]);
        assert_eq!(read(&p).unwrap().options.size, Size::Auto);
    }

    #[test]
    fn unknown_versions_are_refused_before_the_shape() {
        let p = Path::new("r.json");
        for (json, found) in [
            (r#"{"record_version":2,"anything":"else"}"#, "2"),
            (r#"{"record_version":"1"}"#, "\"1\""),
            (r#"{"sha256":"x"}"#, "missing"),
        ] {
            match parse(json.as_bytes(), p) {
                Err(e @ RecordError::Version { .. }) => {
                    assert!(e.is_usage());
                    let shown = e.to_string();
                    assert!(shown.contains(&format!("record_version {found}")), "{shown}");
                    assert!(shown.contains("version 1 only"), "{shown}");
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        assert!(matches!(parse(b"{\"record_version\":1}", p), Err(RecordError::Shape { .. })));
        assert!(matches!(parse(b"not json", p), Err(RecordError::Shape { .. })));
    }

    #[test]
    fn differences_name_the_fields_that_moved() {
        let a = sample();
        assert_eq!(differences(&a, &a), []);
        let mut b = sample();
        b.worker_image_digest = Digest::of(b"other worker");
        b.host_kernel = None;
        b.sha256 = Digest::of(b"other out");
        let d = differences(&a, &b);
        let fields: Vec<_> = d.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["worker_image_digest", "host_kernel"]);
        assert_eq!((d[1].record.as_str(), d[1].now.as_str()), ("6.1.0", "none"));
    }
}

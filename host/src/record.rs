//! The build record (`pull --record FILE`, and the `record` field of `--json`): what a build
//! took and gave, enough to rebuild it and to say what changed when the rebuild differs. Its
//! format is versioned (`record_version`). Written atomically: a temp file beside the target,
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
    #[error("writing the build record {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
        assert_eq!(serde_json::from_slice::<Record>(&std::fs::read(&p).unwrap()).unwrap(), r);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["options"]["size"]["exact"], 4u64 << 30);
        assert_eq!(v["record_version"], 1);
        // Written again over itself: still one file, no temp left beside it.
        write(&sample(), &p).unwrap();
        let names: Vec<_> =
            std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["build.json"]);
        let again: Record = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(again.options.size, Size::Auto);
    }
}

//! `rootbox bundle`: a pulled rootfs packed with a manifest into one tar+zstd archive, the
//! unit a VM manager's image catalog ships (`rootfs.ext4` + `manifest.json`).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::pull;
use crate::report::Report;

/// zstd level: measured on the Debian minbase test image (see README, "Bundles").
pub const ZSTD_LEVEL: i32 = 10;

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub name: String,
    pub distro: String,
    pub arch: String,
    pub kernel_ref: Option<String>,
    pub description: Option<String>,
    pub source: SourceInfo,
    pub rootfs: RootfsInfo,
    pub created: String,
    pub rootbox_version: &'static str,
}

#[derive(Debug, Serialize)]
pub struct SourceInfo {
    pub reference: String,
    pub digest: Digest,
}

#[derive(Debug, Serialize)]
pub struct RootfsInfo {
    pub file: &'static str,
    pub sha256: Digest,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct BundleReport {
    pub path: PathBuf,
    pub sha256: Digest,
    pub size_bytes: u64,
    pub manifest: Manifest,
    pub build: Report,
}

/// A catalog name from an image reference: the repository's last component and the tag,
/// lowercased, anything unusual as `-` (`docker.io/library/debian:bookworm` →
/// `debian-bookworm`).
pub fn name_from_reference(source: &str) -> String {
    let (transport, rest) = source.split_once(':').unwrap_or(("", source));
    let raw = match transport {
        "oci" => {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t)),
                _ => (rest, None),
            };
            let base = Path::new(dir.trim_end_matches('/'))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match tag {
                Some(t) => format!("{base}-{t}"),
                None => base,
            }
        }
        "docker-archive" | "rootfs-tar" => {
            if rest == "-" {
                "rootfs".to_string()
            } else {
                let file = Path::new(rest)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut stem = file.as_str();
                for ext in [".tar.gz", ".tar.zst", ".tgz", ".tar", ".gz", ".zst"] {
                    if let Some(s) = stem.strip_suffix(ext) {
                        stem = s;
                        break;
                    }
                }
                stem.to_string()
            }
        }
        _ => {
            // docker://REGISTRY/REPO:TAG or a bare reference.
            let r = source.trim_start_matches("docker://");
            let r = r.split('@').next().unwrap_or(r);
            let last = r.rsplit('/').next().unwrap_or(r);
            match last.split_once(':') {
                Some((repo, tag)) => format!("{repo}-{tag}"),
                None => last.to_string(),
            }
        }
    };
    let cleaned: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(
            |c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' { c } else { '-' },
        )
        .collect();
    let trimmed = cleaned.trim_matches('-').to_string();
    if trimmed.is_empty() {
        "rootfs".into()
    } else {
        trimmed
    }
}

/// RFC 3339 UTC from the system clock.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What to bundle: a pull, and what the manifest says of it (see `cli::BundleArgs`).
#[derive(Debug, Clone)]
pub struct Request {
    pub build: pull::Request,
    pub name: Option<String>,
    pub distro: Option<String>,
    pub arch: Option<String>,
    pub kernel_ref: Option<String>,
    pub description: Option<String>,
    pub zstd_level: i32,
}

pub fn run(args: &Request) -> Result<BundleReport> {
    let out = &args.build.output;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The rootfs is built as a hidden temp file beside the bundle and removed afterwards.
    let scratch = tempfile::Builder::new()
        .prefix(".rootbox-bundle.")
        .tempdir_in(&dir)
        .context("creating a temp dir beside the bundle")?;
    let mut build_args = args.build.clone();
    build_args.output = scratch.path().join("rootfs.ext4");
    // The record (of the rootfs: the bundle's manifest has a creation time) is written once
    // the bundle is in place, not when the rootfs is.
    build_args.record = None;
    let report = pull::run(&build_args)?;

    let distro = args.distro.clone().unwrap_or_else(|| {
        match (report.os_release.get("ID"), report.os_release.get("VERSION_ID")) {
            (Some(id), Some(v)) => format!("{id}-{v}"),
            (Some(id), None) => id.clone(),
            _ => "unknown".into(),
        }
    });
    let manifest = Manifest {
        name: args.name.clone().unwrap_or_else(|| name_from_reference(&args.build.source)),
        distro,
        arch: args.arch.clone().unwrap_or_else(|| args.build.platform.arch.clone()),
        kernel_ref: args.kernel_ref.clone(),
        description: args.description.clone(),
        source: SourceInfo {
            reference: report.source.clone(),
            digest: report.source_digest.clone(),
        },
        rootfs: RootfsInfo {
            file: "rootfs.ext4",
            sha256: report.sha256.clone(),
            size_bytes: report.size_bytes,
        },
        created: now_rfc3339(),
        rootbox_version: env!("CARGO_PKG_VERSION"),
    };

    let temp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .context("creating the bundle's temp file")?;
    let (sha256, size_bytes) = pack(temp.as_file(), &manifest, &build_args.output, args.zstd_level)
        .with_context(|| format!("packing {}", out.display()))?;
    let mut perms = temp.as_file().metadata()?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    temp.as_file().set_permissions(perms)?;
    temp.as_file().sync_all()?;
    temp.persist(out).map_err(|e| e.error).with_context(|| format!("writing {}", out.display()))?;
    if let Some(p) = &args.build.record {
        crate::record::write(&report.record, p)?;
    }
    Ok(BundleReport { path: out.clone(), sha256, size_bytes, manifest, build: report })
}

/// Streams `manifest.json` and the rootfs into `file` as tar+zstd (all cores).
fn pack(file: &File, manifest: &Manifest, rootfs: &Path, level: i32) -> Result<(Digest, u64)> {
    let hashing = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut enc = zstd::stream::write::Encoder::new(hashing, level)?;
    let threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    enc.multithread(threads)?;
    let mut tar = tar::Builder::new(enc);
    let json = serde_json::to_vec_pretty(manifest)?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(json.len() as u64);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    tar.append_data(&mut h, "manifest.json", json.as_slice())?;
    let mut f = File::open(rootfs)?;
    let mut h = tar::Header::new_gnu();
    h.set_metadata(&f.metadata()?);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mode(0o644);
    tar.append_data(&mut h, "rootfs.ext4", &mut f)?;
    let enc = tar.into_inner()?;
    let mut hashing = enc.finish()?;
    hashing.flush()?;
    Ok((Digest::from_sha256(hashing.hasher), hashing.bytes))
}

impl BundleReport {
    pub fn print(&self, json: bool) -> Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
        } else {
            println!("{}", self.path.display());
            println!("{}", self.sha256.hex());
            println!("{}", self.size_bytes);
        }
        self.build.print_notes(json);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_references() {
        let cases = [
            ("docker.io/library/debian:bookworm", "debian-bookworm"),
            ("docker://127.0.0.1:5000/team/app:v1.2", "app-v1.2"),
            ("debian", "debian"),
            ("docker.io/library/alpine@sha256:abcd", "alpine"),
            ("oci:/images/debian:bookworm", "debian-bookworm"),
            ("oci:/images/busybox/", "busybox"),
            ("docker-archive:/tmp/My Image.tar", "my-image"),
            ("rootfs-tar:-", "rootfs"),
            ("rootfs-tar:/x/ubuntu-24.04.tar.gz", "ubuntu-24.04"),
        ];
        for (src, want) in cases {
            assert_eq!(name_from_reference(src), want, "{src}");
        }
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}

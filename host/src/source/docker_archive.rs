//! `docker-archive:FILE`: a `docker save` tarball, read in place (members located once by
//! offset, never extracted). Both layouts: `<id>/layer.tar` (Docker < 25, uncompressed,
//! duplicates as symlinks) and `blobs/sha256/<hex>` (Docker >= 25).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::local;
use super::spec::{self, PlatformSpec};
use super::{
    check_platform, pair_diff_ids, read_bounded, BlobLocation, CompressionHint, Image, Layer,
    Result, Source, SourceError,
};
use crate::digest::Digest;

pub struct DockerArchive {
    path: PathBuf,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, len: u64 },
    Link(String),
}

impl DockerArchive {
    pub fn new(path: PathBuf, name: &str) -> Self {
        Self { path, name: name.to_string() }
    }

    fn listing(&self, e: rootbox_tar::Error) -> SourceError {
        match e {
            rootbox_tar::Error::Io(source) => SourceError::Io {
                what: format!("{}: listing members", self.name),
                path: self.path.clone(),
                source,
            },
            refused => SourceError::Failed {
                what: format!("{}: listing members", self.name),
                source: refused.into(),
            },
        }
    }

    /// Opens the tarball once (a regular file, never blocking: see `local`).
    fn open(&self) -> Result<Arc<File>> {
        local::open_regular(&self.path).map(Arc::new).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                SourceError::Missing { what: "docker archive".into(), path: self.path.clone() }
            }
            _ => SourceError::Io { what: self.name.clone(), path: self.path.clone(), source: e },
        })
    }

    /// Lists the tarball's members: name → location (or link target).
    fn members(&self, f: &File) -> Result<HashMap<String, Member>> {
        let mut ar = rootbox_tar::Archive::seekable(std::io::BufReader::new(f));
        let mut out = HashMap::new();
        while let Some(member) = ar.next_member().map_err(|e| self.listing(e))? {
            let rootbox_tar::Member::Entry(e) = member else { continue };
            let name = normalize(&String::from_utf8_lossy(&e.name));
            let m = match e.kind {
                rootbox_tar::Kind::Regular if e.sparse.is_none() => {
                    Member::File { offset: ar.position(), len: e.size }
                }
                rootbox_tar::Kind::Symlink | rootbox_tar::Kind::Link => {
                    let target = String::from_utf8_lossy(&e.link).into_owned();
                    let target = if e.kind == rootbox_tar::Kind::Symlink {
                        let dir = Path::new(&name)
                            .parent()
                            .map(|p| p.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        normalize(&format!("{dir}/{target}"))
                    } else {
                        normalize(&target)
                    };
                    Member::Link(target)
                }
                _ => continue,
            };
            out.insert(name, m);
        }
        Ok(out)
    }

    fn locate(&self, members: &HashMap<String, Member>, name: &str) -> Result<(u64, u64)> {
        let mut cur = normalize(name);
        for _ in 0..8 {
            match members.get(&cur) {
                Some(Member::File { offset, len }) => return Ok((*offset, *len)),
                Some(Member::Link(t)) => cur = t.clone(),
                None => break,
            }
        }
        Err(SourceError::Missing {
            what: format!("{}: member {name:?}", self.name),
            path: self.path.clone(),
        })
    }

    fn read_member(
        &self,
        file: &Arc<File>,
        members: &HashMap<String, Member>,
        name: &str,
        what: &str,
    ) -> Result<Vec<u8>> {
        let (offset, len) = self.locate(members, name)?;
        if len > spec::JSON_MAX {
            return Err(SourceError::TooLarge { what: what.into(), max: spec::JSON_MAX });
        }
        read_bounded(local::At::new(file.clone(), offset, len), what, &self.path)
    }
}

/// Member names as written by docker: drop `./` and empty components, resolve `..`.
fn normalize(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// `blobs/sha256/<hex>` names its own digest.
fn digest_in_name(name: &str) -> Option<Digest> {
    let hex = normalize(name).strip_prefix("blobs/sha256/")?.to_string();
    Digest::parse(&format!("sha256:{hex}")).ok()
}

impl Source for DockerArchive {
    fn resolve(&self, platform: &PlatformSpec) -> Result<Image> {
        let file = self.open()?;
        let members = self.members(&file)?;
        let what = format!("{} manifest.json", self.name);
        let manifest: Vec<Entry> =
            serde_json::from_slice(&self.read_member(&file, &members, "manifest.json", &what)?)
                .map_err(|source| SourceError::Json { what: what.clone(), source })?;
        let entry = match manifest.as_slice() {
            [one] => one,
            [] => return Err(SourceError::Invalid(format!("{what} lists no image"))),
            many => {
                return Err(SourceError::Invalid(format!(
                    "{what} lists {} images; rootbox takes archives of one image ({})",
                    many.len(),
                    many.iter()
                        .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        let cwhat = format!("{} config", self.name);
        let config_bytes = self.read_member(&file, &members, &entry.config, &cwhat)?;
        let config_digest = Digest::of(&config_bytes);
        let expected = digest_in_name(&entry.config).or_else(|| {
            let stem = Path::new(&entry.config).file_stem()?.to_string_lossy().into_owned();
            Digest::parse(&format!("sha256:{stem}")).ok()
        });
        if let Some(expected) = expected {
            if expected != config_digest {
                return Err(SourceError::DigestMismatch {
                    what: cwhat,
                    expected,
                    actual: config_digest,
                });
            }
        }
        let config: spec::Config = serde_json::from_slice(&config_bytes)
            .map_err(|source| SourceError::Json { what: cwhat, source })?;
        check_platform(&self.name, platform, &config)?;
        let diff_ids = pair_diff_ids(&self.name, entry.layers.len(), &config)?;
        let mut layers = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(diff_ids) {
            let (offset, len) = self.locate(&members, name)?;
            let named = digest_in_name(name);
            layers.push(Layer {
                digest: named.clone().unwrap_or_else(|| diff_id.clone()),
                verify_digest: named.is_some(),
                diff_id: Some(diff_id),
                compression: CompressionHint::Sniff,
                blob: BlobLocation::Opened {
                    file: file.clone(),
                    path: self.path.clone(),
                    offset,
                    len,
                },
            });
        }
        Ok(Image { name: self.name.clone(), digest: config_digest, layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(normalize("./abc/layer.tar"), "abc/layer.tar");
        assert_eq!(normalize("abc/../def/layer.tar"), "def/layer.tar");
        assert_eq!(normalize("/manifest.json"), "manifest.json");
        let hex = "a".repeat(64);
        assert_eq!(digest_in_name(&format!("blobs/sha256/{hex}")).unwrap().hex(), hex);
        assert!(digest_in_name("blobs/sha256/../../x").is_none());
    }
}

//! `oci:DIR[:TAG]`: an OCI image layout on disk.

use std::path::PathBuf;
use std::sync::Arc;

use super::local::Root;
use super::spec::{self, Descriptor, Index, Manifest, PlatformSpec};
use super::{
    check_blob, manifest_layers, read_bounded, select_platform, BlobLocation, Image, Result,
    Source, SourceError,
};
use crate::digest::Digest;

pub struct OciLayout {
    dir: PathBuf,
    tag: Option<String>,
    name: String,
}

impl OciLayout {
    /// `DIR[:TAG]`: a trailing `:TAG` is split off unless the whole string is a directory.
    pub fn parse(rest: &str, name: &str) -> Self {
        let whole = PathBuf::from(rest);
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((d, t)) if !whole.is_dir() && !t.contains('/') && !d.is_empty() => {
                (PathBuf::from(d), Some(t.to_string()))
            }
            _ => (whole, None),
        };
        Self { dir, tag, name: name.to_string() }
    }

    fn blob_name(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }

    /// Opens `rel` beneath the layout (regular files only, no symlinks).
    fn open(&self, root: &Root, rel: &str, what: &str) -> Result<std::fs::File> {
        root.file(rel).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                SourceError::Missing { what: what.into(), path: root.display(rel) }
            }
            _ => SourceError::Io { what: what.into(), path: root.display(rel), source: e },
        })
    }

    /// Reads a JSON blob, checking its size and digest against the descriptor.
    fn read_blob_json<T: serde::de::DeserializeOwned>(
        &self,
        root: &Root,
        desc: &Descriptor,
        what: &str,
    ) -> Result<T> {
        if desc.size > spec::JSON_MAX {
            return Err(SourceError::TooLarge { what: what.into(), max: spec::JSON_MAX });
        }
        let rel = Self::blob_name(&desc.digest);
        let f = self.open(root, &rel, &format!("{what} blob {}", desc.digest))?;
        let bytes = read_bounded(f, what, &root.display(&rel))?;
        check_blob(what, desc, &bytes)?;
        serde_json::from_slice(&bytes)
            .map_err(|source| SourceError::Json { what: what.into(), source })
    }

    fn pick<'a>(&self, index: &'a Index) -> Result<&'a Descriptor> {
        match &self.tag {
            Some(tag) => index
                .manifests
                .iter()
                .find(|d| d.annotations.get(spec::REF_NAME) == Some(tag))
                .ok_or_else(|| {
                    let tags: Vec<&str> = index
                        .manifests
                        .iter()
                        .filter_map(|d| d.annotations.get(spec::REF_NAME).map(String::as_str))
                        .collect();
                    SourceError::Invalid(format!(
                        "{}: no manifest tagged {tag:?} (tags: {})",
                        self.name,
                        if tags.is_empty() { "none".into() } else { tags.join(", ") }
                    ))
                }),
            None => match index.manifests.as_slice() {
                [one] => Ok(one),
                [] => Err(SourceError::Invalid(format!(
                    "{}: index.json lists no manifests",
                    self.name
                ))),
                many => Err(SourceError::Invalid(format!(
                    "{}: index.json lists {} manifests; name one with oci:DIR:TAG",
                    self.name,
                    many.len()
                ))),
            },
        }
    }

    /// Follows nested indexes down to the manifest for `platform`.
    fn manifest(
        &self,
        root: &Root,
        mut desc: Descriptor,
        platform: &PlatformSpec,
    ) -> Result<(Descriptor, Manifest)> {
        for _ in 0..4 {
            let is_index =
                desc.media_type == spec::OCI_INDEX || desc.media_type == spec::DOCKER_LIST;
            if !is_index {
                let m: Manifest =
                    self.read_blob_json(root, &desc, &format!("{} manifest", self.name))?;
                return Ok((desc, m));
            }
            let idx: Index =
                self.read_blob_json(root, &desc, &format!("{} image index", self.name))?;
            desc = select_platform(&self.name, &idx, platform)?;
        }
        Err(SourceError::Invalid(format!("{}: image indexes nested too deeply", self.name)))
    }
}

impl Source for OciLayout {
    fn resolve(&self, platform: &PlatformSpec) -> Result<Image> {
        let root = Root::open(&self.dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::Missing {
                what: format!("{}: OCI layout directory", self.name),
                path: self.dir.clone(),
            },
            _ => SourceError::Io {
                what: format!("{}: OCI layout directory", self.name),
                path: self.dir.clone(),
                source: e,
            },
        })?;
        self.open(&root, "oci-layout", &format!("{}: OCI layout marker", self.name))?;
        let what = format!("{} index.json", self.name);
        let f = self.open(&root, "index.json", &what)?;
        let bytes = read_bounded(f, &what, &root.display("index.json"))?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|source| SourceError::Json { what: what.clone(), source })?;
        let desc = self.pick(&index)?.clone();
        let (desc, manifest) = self.manifest(&root, desc, platform)?;
        let config: spec::Config =
            self.read_blob_json(&root, &manifest.config, &format!("{} config", self.name))?;
        let layers = manifest_layers(&self.name, platform, &manifest, &config, |d, what| {
            let rel = Self::blob_name(&d.digest);
            // Opened now, once: what is verified and shipped later is this file.
            let file = self.open(&root, &rel, what)?;
            let len = file
                .metadata()
                .map_err(|e| SourceError::Io {
                    what: what.into(),
                    path: root.display(&rel),
                    source: e,
                })?
                .len();
            if len != d.size {
                return Err(SourceError::SizeMismatch {
                    what: what.into(),
                    expected: d.size,
                    actual: len,
                });
            }
            Ok(BlobLocation::Opened {
                file: Arc::new(file),
                path: root.display(&rel),
                offset: 0,
                len: d.size,
            })
        })?;
        Ok(Image { name: self.name.clone(), digest: desc.digest, layers })
    }
}

//! `oci:DIR[:TAG]`: an OCI image layout on disk.

use std::path::PathBuf;

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

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// Reads a JSON blob, checking its size and digest against the descriptor.
    fn read_blob_json<T: serde::de::DeserializeOwned>(
        &self,
        desc: &Descriptor,
        what: &str,
    ) -> Result<T> {
        if desc.size > spec::JSON_MAX {
            return Err(SourceError::TooLarge { what: what.into(), max: spec::JSON_MAX });
        }
        let path = self.blob_path(&desc.digest);
        let f = std::fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::Missing {
                what: format!("{what} blob {}", desc.digest),
                path: path.clone(),
            },
            _ => SourceError::Io { what: what.into(), path: path.clone(), source: e },
        })?;
        let bytes = read_bounded(f, what, &path)?;
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
        mut desc: Descriptor,
        platform: &PlatformSpec,
    ) -> Result<(Descriptor, Manifest)> {
        for _ in 0..4 {
            let is_index =
                desc.media_type == spec::OCI_INDEX || desc.media_type == spec::DOCKER_LIST;
            if !is_index {
                let m: Manifest = self.read_blob_json(&desc, &format!("{} manifest", self.name))?;
                return Ok((desc, m));
            }
            let idx: Index = self.read_blob_json(&desc, &format!("{} image index", self.name))?;
            desc = select_platform(&self.name, &idx, platform)?;
        }
        Err(SourceError::Invalid(format!("{}: image indexes nested too deeply", self.name)))
    }
}

impl Source for OciLayout {
    fn resolve(&self, platform: &PlatformSpec) -> Result<Image> {
        let layout = self.dir.join("oci-layout");
        if !layout.is_file() {
            return Err(SourceError::Missing {
                what: format!("{}: OCI layout marker", self.name),
                path: layout,
            });
        }
        let index: Index = super::read_json_file(
            &self.dir.join("index.json"),
            &format!("{} index.json", self.name),
        )?;
        let desc = self.pick(&index)?.clone();
        let (desc, manifest) = self.manifest(desc, platform)?;
        let config: spec::Config =
            self.read_blob_json(&manifest.config, &format!("{} config", self.name))?;
        let layers = manifest_layers(&self.name, platform, &manifest, &config, |d, what| {
            let path = self.blob_path(&d.digest);
            let meta = std::fs::metadata(&path)
                .map_err(|_| SourceError::Missing { what: what.into(), path: path.clone() })?;
            if meta.len() != d.size {
                return Err(SourceError::SizeMismatch {
                    what: what.into(),
                    expected: d.size,
                    actual: meta.len(),
                });
            }
            Ok(BlobLocation::File { path, offset: 0, len: d.size })
        })?;
        Ok(Image { name: self.name.clone(), digest: desc.digest, layers })
    }
}

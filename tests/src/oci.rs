//! Writes images in the source formats rootbox reads: an OCI image layout directory and a
//! `docker save` archive (old `<id>/layer.tar` layout and the newer `blobs/sha256/` one), with
//! knobs to corrupt them the ways a hostile or broken source can.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::digest::{sha256_digest, sha256_hex};

pub const MT_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MT_DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MT_TAR,
            Compression::Gzip => MT_TAR_GZIP,
            Compression::Zstd => MT_TAR_ZSTD,
        }
    }

    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => gzip(tar),
            Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd into memory"),
        }
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// A way to break one layer of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The blob's bytes change after its digest was taken.
    BlobDigest,
    /// The config lists a diff_id that is not the layer's.
    DiffId,
    /// The manifest names the blob but it is not written.
    MissingBlob,
    /// The blob is cut in half; its digest and size describe the cut bytes.
    TruncatedBlob,
}

/// One layer: its blob as stored, the blob's media type and the uncompressed tar's digest.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    /// The uncompressed tar, when known (docker archives need it).
    pub tar: Option<Vec<u8>>,
    pub blob: Vec<u8>,
    pub media_type: String,
    pub diff_id: String,
    pub fault: Fault,
}

impl LayerSpec {
    pub fn new(tar: Vec<u8>, compression: Compression) -> LayerSpec {
        LayerSpec {
            blob: compression.compress(&tar),
            media_type: compression.media_type().to_string(),
            diff_id: sha256_digest(&tar),
            tar: Some(tar),
            fault: Fault::None,
        }
    }

    /// A layer given as its stored blob (for streams too large to keep uncompressed).
    pub fn precompressed(blob: Vec<u8>, media_type: &str, diff_id: String) -> LayerSpec {
        LayerSpec {
            tar: None,
            blob,
            media_type: media_type.to_string(),
            diff_id,
            fault: Fault::None,
        }
    }

    pub fn media_type(mut self, media_type: &str) -> LayerSpec {
        self.media_type = media_type.to_string();
        self
    }

    pub fn fault(mut self, fault: Fault) -> LayerSpec {
        self.fault = fault;
        self
    }

    /// (bytes written as the blob, digest named in the manifest).
    fn stored(&self) -> (Vec<u8>, String) {
        match self.fault {
            Fault::TruncatedBlob => {
                let cut = self.blob[..self.blob.len() / 2].to_vec();
                let d = sha256_digest(&cut);
                (cut, d)
            }
            Fault::BlobDigest => {
                let d = sha256_digest(&self.blob);
                let mut b = self.blob.clone();
                let mid = b.len() / 2;
                b[mid] ^= 0x55;
                (b, d)
            }
            _ => (self.blob.clone(), sha256_digest(&self.blob)),
        }
    }

    fn config_diff_id(&self) -> String {
        if self.fault == Fault::DiffId {
            sha256_digest(format!("not {}", self.diff_id).as_bytes())
        } else {
            self.diff_id.clone()
        }
    }
}

/// An image: its layers, bottom first.
#[derive(Clone, Debug)]
pub struct Image {
    pub layers: Vec<LayerSpec>,
}

/// What was written, as the manifest and config name it.
#[derive(Clone, Debug)]
pub struct Written {
    pub manifest_digest: String,
    pub config_digest: String,
    /// Blob digests as the manifest lists them.
    pub layer_digests: Vec<String>,
    /// diff_ids as the config lists them.
    pub diff_ids: Vec<String>,
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Result<String> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let hex = sha256_hex(bytes);
    fs::write(blobs.join(&hex), bytes).with_context(|| format!("writing blob {hex}"))?;
    Ok(format!("sha256:{hex}"))
}

fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON into memory")
}

impl Image {
    pub fn new(layers: Vec<LayerSpec>) -> Image {
        Image { layers }
    }

    /// Convenience: every tar with one compression.
    pub fn from_tars(tars: &[Vec<u8>], compression: Compression) -> Image {
        Image::new(tars.iter().map(|t| LayerSpec::new(t.clone(), compression)).collect())
    }

    pub fn config(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.layers.iter().map(LayerSpec::config_diff_id).collect();
        json_bytes(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": self.layers.iter().map(|_| json!({"created_by": "rootbox-tests"})).collect::<Vec<_>>(),
        }))
    }

    /// Writes blobs and the manifest into `dir` (an OCI layout being built) and returns the
    /// manifest's descriptor-to-be and what was written.
    fn write_blobs(&self, dir: &Path) -> Result<(Vec<u8>, Written)> {
        let config = self.config();
        let config_digest = write_blob(dir, &config)?;
        let mut layers = Vec::new();
        let mut layer_digests = Vec::new();
        for l in &self.layers {
            let (bytes, digest) = l.stored();
            if l.fault != Fault::MissingBlob {
                let hex = digest.trim_start_matches("sha256:");
                let blobs = dir.join("blobs/sha256");
                fs::create_dir_all(&blobs)?;
                fs::write(blobs.join(hex), &bytes)?;
            }
            layers.push(json!({"mediaType": l.media_type, "digest": digest, "size": bytes.len()}));
            layer_digests.push(digest);
        }
        let manifest = json_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers,
        }));
        let manifest_digest = write_blob(dir, &manifest)?;
        let diff_ids = self.layers.iter().map(LayerSpec::config_diff_id).collect();
        Ok((manifest, Written { manifest_digest, config_digest, layer_digests, diff_ids }))
    }

    /// An OCI image layout at `dir` holding only this image, tagged `tag` if given.
    pub fn write_oci(&self, dir: &Path, tag: Option<&str>) -> Result<Written> {
        let mut w = write_oci_multi(dir, &[(self, tag)])?;
        Ok(w.remove(0))
    }

    /// A `docker save` archive at `file`. Layers are stored uncompressed, as docker does.
    pub fn write_docker_archive(&self, file: &Path, layout: DockerLayout) -> Result<Written> {
        let config = self.config();
        let config_hex = sha256_hex(&config);
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut layer_paths = Vec::new();
        let mut layer_digests = Vec::new();
        let mut parent: Option<String> = None;
        for (i, l) in self.layers.iter().enumerate() {
            let tar = l.tar.clone().context("docker archives need the uncompressed tar")?;
            let tar_digest = sha256_hex(&tar);
            let path = match layout {
                DockerLayout::Legacy => {
                    // v1 ids are arbitrary; docker derives them from the chain. Any unique hex works.
                    let id = sha256_hex(format!("{i}:{tar_digest}").as_bytes());
                    let v1 = json!({"id": id, "parent": parent, "created": "2024-01-01T00:00:00Z"});
                    files.push((format!("{id}/VERSION"), b"1.0".to_vec()));
                    files.push((format!("{id}/json"), json_bytes(&v1)));
                    parent = Some(id.clone());
                    format!("{id}/layer.tar")
                }
                DockerLayout::Blobs => format!("blobs/sha256/{tar_digest}"),
            };
            if l.fault != Fault::MissingBlob {
                files.push((path.clone(), tar));
            }
            layer_paths.push(path);
            layer_digests.push(format!("sha256:{tar_digest}"));
        }
        let config_path = match layout {
            DockerLayout::Legacy => format!("{config_hex}.json"),
            DockerLayout::Blobs => format!("blobs/sha256/{config_hex}"),
        };
        files.push((config_path.clone(), config));
        let manifest = json!([{
            "Config": config_path,
            "RepoTags": ["rootbox-test:latest"],
            "Layers": layer_paths,
        }]);
        files.push(("manifest.json".into(), json_bytes(&manifest)));
        if layout == DockerLayout::Legacy {
            let last = parent.unwrap_or_default();
            files.push((
                "repositories".into(),
                json_bytes(&json!({"rootbox-test": {"latest": last}})),
            ));
        } else {
            files.push(("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
        }
        let mut out = Vec::new();
        {
            let mut b = tar::Builder::new(&mut out);
            let mut dirs_done = std::collections::BTreeSet::new();
            for (name, data) in &files {
                if let Some((dir, _)) = name.rsplit_once('/') {
                    let mut prefix = String::new();
                    for part in dir.split('/') {
                        prefix = if prefix.is_empty() {
                            part.to_string()
                        } else {
                            format!("{prefix}/{part}")
                        };
                        if dirs_done.insert(prefix.clone()) {
                            let mut h = tar::Header::new_ustar();
                            h.set_entry_type(tar::EntryType::Directory);
                            h.set_mode(0o755);
                            h.set_size(0);
                            b.append_data(&mut h, format!("{prefix}/"), &[][..])?;
                        }
                    }
                }
                let mut h = tar::Header::new_ustar();
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, &data[..])?;
            }
            b.finish()?;
        }
        fs::write(file, out).with_context(|| format!("writing {}", file.display()))?;
        let diff_ids = self.layers.iter().map(LayerSpec::config_diff_id).collect();
        Ok(Written {
            manifest_digest: sha256_digest(&json_bytes(&manifest)),
            config_digest: format!("sha256:{config_hex}"),
            layer_digests,
            diff_ids,
        })
    }
}

/// Which `docker save` layout to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerLayout {
    /// `<id>/layer.tar`, `<config-hex>.json` (docker before 25).
    Legacy,
    /// `blobs/sha256/<hex>` for config and layers (docker 25 and later).
    Blobs,
}

/// One OCI layout holding several images, each with an optional tag.
pub fn write_oci_multi(dir: &Path, images: &[(&Image, Option<&str>)]) -> Result<Vec<Written>> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut manifests = Vec::new();
    let mut written = Vec::new();
    for (image, tag) in images {
        let (manifest, w) = image.write_blobs(dir)?;
        let mut desc =
            json!({"mediaType": MT_MANIFEST, "digest": w.manifest_digest, "size": manifest.len()});
        if let Some(t) = tag {
            desc["annotations"] = json!({ REF_NAME: t });
        }
        manifests.push(desc);
        written.push(w);
    }
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
    fs::write(dir.join("index.json"), json_bytes(&index))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(path).expect("read")).expect("json")
    }

    #[test]
    fn oci_layout_is_self_consistent() {
        let d = tempfile::tempdir().expect("tempdir");
        let img = Image::new(vec![
            LayerSpec::new(b"tar one".to_vec(), Compression::Gzip),
            LayerSpec::new(b"tar two".to_vec(), Compression::Zstd),
            LayerSpec::new(b"tar three".to_vec(), Compression::None),
        ]);
        let w = img.write_oci(d.path(), Some("t")).expect("write");
        let index = read_json(&d.path().join("index.json"));
        assert_eq!(index["manifests"][0]["digest"], w.manifest_digest);
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "t");
        let blob = |dg: &str| d.path().join("blobs/sha256").join(dg.trim_start_matches("sha256:"));
        let manifest = read_json(&blob(&w.manifest_digest));
        let config = read_json(&blob(&w.config_digest));
        assert_eq!(config["rootfs"]["diff_ids"][1], sha256_digest(b"tar two"));
        for (i, l) in manifest["layers"].as_array().expect("layers").iter().enumerate() {
            let bytes = fs::read(blob(l["digest"].as_str().expect("digest"))).expect("blob");
            assert_eq!(sha256_digest(&bytes), w.layer_digests[i]);
            assert_eq!(l["size"], bytes.len());
        }
        let mut gz = Vec::new();
        flate2::read::GzDecoder::new(&fs::read(blob(&w.layer_digests[0])).expect("b")[..])
            .read_to_end(&mut gz)
            .expect("gunzip");
        assert_eq!(gz, b"tar one");
        assert_eq!(manifest["layers"][1]["mediaType"], MT_TAR_ZSTD);
    }

    #[test]
    fn faults_break_what_they_say() {
        let d = tempfile::tempdir().expect("tempdir");
        let img = Image::new(vec![
            LayerSpec::new(vec![1; 4096], Compression::Gzip).fault(Fault::BlobDigest),
            LayerSpec::new(vec![2; 4096], Compression::Gzip).fault(Fault::MissingBlob),
            LayerSpec::new(vec![3; 4096], Compression::Gzip).fault(Fault::TruncatedBlob),
            LayerSpec::new(vec![4; 4096], Compression::None).fault(Fault::DiffId),
        ]);
        let w = img.write_oci(d.path(), None).expect("write");
        let path = |dg: &str| d.path().join("blobs/sha256").join(dg.trim_start_matches("sha256:"));
        let b0 = fs::read(path(&w.layer_digests[0])).expect("blob 0");
        assert_ne!(sha256_digest(&b0), w.layer_digests[0]);
        assert!(!path(&w.layer_digests[1]).exists());
        let b2 = fs::read(path(&w.layer_digests[2])).expect("blob 2");
        assert_eq!(sha256_digest(&b2), w.layer_digests[2]);
        assert!(flate2::read::GzDecoder::new(&b2[..]).read_to_end(&mut Vec::new()).is_err());
        assert_ne!(w.diff_ids[3], sha256_digest(&[4; 4096]));
    }

    #[test]
    fn docker_archive_lists_its_layers() {
        let d = tempfile::tempdir().expect("tempdir");
        for layout in [DockerLayout::Legacy, DockerLayout::Blobs] {
            let img = Image::from_tars(&[b"a".to_vec(), b"b".to_vec()], Compression::Gzip);
            let file = d.path().join(format!("{layout:?}.tar"));
            img.write_docker_archive(&file, layout).expect("write");
            let bytes = fs::read(&file).expect("read");
            let mut a = tar::Archive::new(&bytes[..]);
            let mut found = std::collections::BTreeMap::new();
            for e in a.entries().expect("entries") {
                let mut e = e.expect("entry");
                let name = e.path().expect("path").display().to_string();
                let mut data = Vec::new();
                e.read_to_end(&mut data).expect("data");
                found.insert(name, data);
            }
            let manifest: serde_json::Value =
                serde_json::from_slice(&found["manifest.json"]).expect("json");
            let layers = manifest[0]["Layers"].as_array().expect("layers");
            assert_eq!(found[layers[0].as_str().expect("s")], b"a");
            assert_eq!(found[layers[1].as_str().expect("s")], b"b");
            let config: serde_json::Value =
                serde_json::from_slice(&found[manifest[0]["Config"].as_str().expect("s")])
                    .expect("json");
            assert_eq!(config["rootfs"]["diff_ids"][0], sha256_digest(b"a"));
        }
    }
}

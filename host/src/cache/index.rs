//! The cache's `index.json`: one manifest descriptor per pulled reference and platform, with
//! the reference in `org.opencontainers.image.ref.name` (as OCI layouts name images) and
//! rootbox's bookkeeping in `dev.rootbox.*` annotations. Entries written by other tools are
//! kept as they are.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{CacheError, Result};
use crate::digest::Digest;
use crate::oci::REF_NAME;

pub const LAST_USED: &str = "dev.rootbox.last-used";
pub const FROM_INDEX: &str = "dev.rootbox.index";

/// One image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full reference as pulled (`127.0.0.1:5000/repo:tag`, `docker.io/library/debian:bookworm`).
    pub reference: String,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// `os/arch[/variant]`.
    pub platform: (String, String, Option<String>),
    /// The image index the manifest was chosen from, if any.
    pub index: Option<Digest>,
    /// Seconds since the epoch.
    pub last_used: u64,
}

impl Entry {
    fn to_value(&self) -> Value {
        let (os, arch, variant) = &self.platform;
        let mut platform = json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        let mut ann = Map::new();
        ann.insert(REF_NAME.into(), json!(self.reference));
        ann.insert(LAST_USED.into(), json!(self.last_used.to_string()));
        if let Some(i) = &self.index {
            ann.insert(FROM_INDEX.into(), json!(i.to_string()));
        }
        json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.size,
            "platform": platform,
            "annotations": ann,
        })
    }

    /// An entry rootbox wrote (others are not rootbox's to manage).
    fn from_value(v: &Value) -> Option<Entry> {
        let ann = v.get("annotations")?;
        let p = v.get("platform")?;
        Some(Entry {
            reference: ann.get(REF_NAME)?.as_str()?.to_string(),
            media_type: v.get("mediaType")?.as_str()?.to_string(),
            digest: Digest::parse(v.get("digest")?.as_str()?).ok()?,
            size: v.get("size")?.as_u64()?,
            platform: (
                p.get("os")?.as_str()?.to_string(),
                p.get("architecture")?.as_str()?.to_string(),
                p.get("variant").and_then(Value::as_str).map(str::to_string),
            ),
            index: ann.get(FROM_INDEX).and_then(Value::as_str).and_then(|s| Digest::parse(s).ok()),
            last_used: ann.get(LAST_USED)?.as_str()?.parse().ok()?,
        })
    }

    pub fn platform_string(&self) -> String {
        let (os, arch, v) = &self.platform;
        match v {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        }
    }
}

/// index.json as read: the whole document, so unknown fields survive a rewrite.
pub struct Index {
    doc: Value,
}

pub fn empty() -> Vec<u8> {
    Index { doc: blank() }.to_bytes()
}

fn blank() -> Value {
    json!({"schemaVersion": 2, "mediaType": crate::oci::OCI_INDEX, "manifests": []})
}

pub fn read(path: &Path) -> Result<Index> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index { doc: blank() }),
        Err(source) => return Err(CacheError::Io { op: "reading", path: path.into(), source }),
    };
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|source| CacheError::Json { path: path.into(), source })?;
    if !doc.get("manifests").is_some_and(Value::is_array) {
        let source = serde_json::Error::io(std::io::Error::other("no manifests array"));
        return Err(CacheError::Json { path: path.into(), source });
    }
    Ok(Index { doc })
}

impl Index {
    fn manifests(&mut self) -> &mut Vec<Value> {
        if !self.doc["manifests"].is_array() {
            self.doc["manifests"] = json!([]);
        }
        match self.doc["manifests"].as_array_mut() {
            Some(a) => a,
            None => unreachable!("just made an array"),
        }
    }

    /// Replaces the entry for the same reference and platform, or adds one.
    pub fn upsert(&mut self, e: Entry) {
        let list = self.manifests();
        list.retain(|v| {
            Entry::from_value(v)
                .is_none_or(|old| old.reference != e.reference || old.platform != e.platform)
        });
        list.push(e.to_value());
    }

    /// rootbox's entries.
    pub fn entries(&self) -> Vec<Entry> {
        self.doc["manifests"]
            .as_array()
            .map(|a| a.iter().filter_map(Entry::from_value).collect())
            .unwrap_or_default()
    }

    /// Keeps the entries `keep` says yes to (entries of other tools are always kept).
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        self.manifests().retain(|v| Entry::from_value(v).is_none_or(|e| keep(&e)));
    }

    /// Digests of entries rootbox did not write (their blobs are never pruned).
    pub fn foreign_digests(&self) -> Vec<Digest> {
        self.doc["manifests"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|v| Entry::from_value(v).is_none())
                    .filter_map(|v| v.get("digest")?.as_str().and_then(|s| Digest::parse(s).ok()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(&self.doc).unwrap_or_default();
        b.push(b'\n');
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(r: &str, arch: &str, t: u64) -> Entry {
        Entry {
            reference: r.into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: Digest::of(r.as_bytes()),
            size: 10,
            platform: ("linux".into(), arch.into(), None),
            index: None,
            last_used: t,
        }
    }

    #[test]
    fn upsert_replaces_same_reference_and_platform() {
        let mut idx = Index { doc: blank() };
        idx.manifests().push(json!({"mediaType": "x", "digest": "sha256:00", "size": 1}));
        idx.upsert(entry("r:1", "amd64", 1));
        idx.upsert(entry("r:1", "arm64", 2));
        idx.upsert(entry("r:1", "amd64", 3));
        let es = idx.entries();
        assert_eq!(es.len(), 2);
        assert_eq!(es[1].last_used, 3);
        assert_eq!(idx.doc["manifests"].as_array().unwrap().len(), 3, "foreign entry kept");
        let back: Value = serde_json::from_slice(&idx.to_bytes()).unwrap();
        assert_eq!(back["manifests"][2]["annotations"][REF_NAME], "r:1");
        idx.retain(|e| e.platform.1 == "arm64");
        assert_eq!(idx.entries().len(), 1);
        assert_eq!(idx.doc["manifests"].as_array().unwrap().len(), 2);
    }
}

//! `rootbox cache ls` and `rootbox cache prune`: images are dropped as a whole (least recently
//! used first), then every blob no remaining image needs is removed, with the temp files of
//! interrupted downloads. Prune holds the cache exclusively, so it waits for running pulls.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::index::{self, Entry};
use super::{now_secs, Cache, CacheError, Result};
use crate::digest::Digest;
use crate::size::human;

/// What a manifest or index blob points at: configs and layers (never parsed), child
/// manifests (parsed in turn). Read beneath the cache, never through a symlink, bounded.
fn children(root: &crate::local::Root, d: &Digest) -> Vec<(Digest, Reached)> {
    use std::io::Read as _;
    let Ok(f) = root.file(&format!("blobs/sha256/{}", d.hex())) else { return Vec::new() };
    let mut bytes = Vec::new();
    let max = crate::oci::JSON_MAX;
    if f.take(max + 1).read_to_end(&mut bytes).is_err() || bytes.len() as u64 > max {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else { return Vec::new() };
    let mut out = Vec::new();
    let mut push = |x: &Value, how: Reached| {
        if let Some(d) = x.get("digest").and_then(Value::as_str).and_then(|s| Digest::parse(s).ok())
        {
            out.push((d, how));
        }
    };
    if let Some(c) = v.get("config") {
        push(c, Reached::Leaf);
    }
    for x in v.get("layers").and_then(Value::as_array).into_iter().flatten() {
        push(x, Reached::Leaf);
    }
    for x in v.get("manifests").and_then(Value::as_array).into_iter().flatten() {
        push(x, Reached::Manifest);
    }
    out
}

/// How a blob was reached: as a manifest or index (its JSON names more blobs), or as a config
/// or layer (nothing in it is read).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reached {
    Manifest,
    Leaf,
}

/// Every blob an entry needs, present or not.
fn closure(cache: &Cache, roots: impl IntoIterator<Item = Digest>) -> BTreeSet<Digest> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<(Digest, Reached)> =
        roots.into_iter().map(|d| (d, Reached::Manifest)).collect();
    // Opened once; without it nothing can be read, and only the roots are known.
    let root = crate::local::Root::open(cache.root()).ok();
    while let Some((d, how)) = stack.pop() {
        if seen.insert(d.clone()) && how == Reached::Manifest {
            if let Some(root) = &root {
                stack.extend(children(root, &d));
            }
        }
    }
    seen
}

fn entry_blobs(cache: &Cache, e: &Entry) -> BTreeSet<Digest> {
    // The index itself is kept, not the other platforms it lists.
    let mut set = closure(cache, [e.digest.clone()]);
    if let Some(i) = &e.index {
        set.insert(i.clone());
    }
    set
}

/// Every blob file in the cache with its size.
fn all_blobs(cache: &Cache) -> Result<BTreeMap<Digest, u64>> {
    let dir = cache.root().join("blobs/sha256");
    let mut out = BTreeMap::new();
    let rd = fs::read_dir(&dir).map_err(|source| CacheError::Io {
        op: "listing",
        path: dir.clone(),
        source,
    })?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let (Ok(d), Ok(m)) = (Digest::parse(&format!("sha256:{name}")), e.metadata()) {
            if m.is_file() {
                out.insert(d, m.len());
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct Image {
    reference: String,
    platform: String,
    digest: Digest,
    size_bytes: u64,
    complete: bool,
    last_used: u64,
}

#[derive(Debug, Serialize)]
struct Listing {
    path: String,
    images: Vec<Image>,
    blobs: usize,
    size_bytes: u64,
}

fn ago(secs: u64) -> String {
    let d = now_secs().saturating_sub(secs);
    match d {
        0..=119 => format!("{d} s ago"),
        120..=7199 => format!("{} min ago", d / 60),
        7200..=172_799 => format!("{} h ago", d / 3600),
        _ => format!("{} days ago", d / 86_400),
    }
}

/// `rootbox cache ls`.
pub fn ls(cache: &Cache, json: bool) -> anyhow::Result<()> {
    let idx = index::read(&cache.root().join("index.json"))?;
    let blobs = all_blobs(cache)?;
    let mut images = Vec::new();
    for e in idx.entries() {
        let need = entry_blobs(cache, &e);
        let size_bytes = need.iter().filter_map(|d| blobs.get(d)).sum();
        let complete = need.iter().all(|d| blobs.contains_key(d)) && need.len() > 1;
        images.push(Image {
            platform: e.platform_string(),
            digest: e.digest.clone(),
            reference: e.reference,
            size_bytes,
            complete,
            last_used: e.last_used,
        });
    }
    images.sort_by_key(|i| std::cmp::Reverse(i.last_used));
    let listing = Listing {
        path: cache.root().display().to_string(),
        blobs: blobs.len(),
        size_bytes: blobs.values().sum(),
        images,
    };
    if json {
        println!("{}", serde_json::to_string(&listing)?);
        return Ok(());
    }
    println!("{:<48} {:<14} {:<19} {:>10}  LAST USED", "REFERENCE", "PLATFORM", "DIGEST", "SIZE");
    for i in &listing.images {
        println!(
            "{:<48} {:<14} {:<19} {:>10}  {}{}",
            i.reference,
            i.platform,
            i.digest.short(),
            human(i.size_bytes),
            ago(i.last_used),
            if i.complete { "" } else { " (incomplete)" }
        );
    }
    println!(
        "{}: {} images, {} blobs, {}",
        listing.path,
        listing.images.len(),
        listing.blobs,
        human(listing.size_bytes)
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct Pruned {
    removed_images: Vec<String>,
    removed_blobs: usize,
    freed_bytes: u64,
    kept_images: usize,
    size_bytes: u64,
}

/// `rootbox cache prune [--older-than D] [--max-size N]`: drops images last used before
/// `older_than` ago, then the least recently used until the rest fit in `max_size`, then
/// every blob no kept image needs and the leftovers of interrupted downloads.
pub fn prune(
    cache: &Cache,
    older_than: Option<Duration>,
    max_size: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let _excl = cache.exclusive()?;
    let _idx_lock = cache.index_lock()?;
    let path = cache.root().join("index.json");
    let mut idx = index::read(&path)?;
    let blobs = all_blobs(cache)?;
    let mut entries = idx.entries();
    entries.sort_by_key(|e| std::cmp::Reverse(e.last_used));
    let cutoff = older_than.map(|d| now_secs().saturating_sub(d.as_secs()));
    let mut kept: Vec<(Entry, BTreeSet<Digest>)> = Vec::new();
    let mut counted: BTreeSet<Digest> = BTreeSet::new();
    let mut total = 0u64;
    let mut removed_images = Vec::new();
    let mut over = false;
    for e in entries {
        let need = entry_blobs(cache, &e);
        // `--older-than 0s` drops everything, including what was used this very second.
        let old = cutoff.is_some_and(|c| e.last_used < c || older_than == Some(Duration::ZERO));
        let extra: u64 =
            need.iter().filter(|d| !counted.contains(*d)).filter_map(|d| blobs.get(d)).sum();
        over = over || max_size.is_some_and(|m| total + extra > m);
        if old || over {
            removed_images.push(format!("{} ({})", e.reference, e.platform_string()));
            continue;
        }
        total += extra;
        counted.extend(need.iter().cloned());
        kept.push((e, need));
    }
    let keep_refs: BTreeSet<(String, String)> =
        kept.iter().map(|(e, _)| (e.reference.clone(), e.platform_string())).collect();
    idx.retain(|e| keep_refs.contains(&(e.reference.clone(), e.platform_string())));
    let mut live: BTreeSet<Digest> = kept.into_iter().flat_map(|(_, n)| n).collect();
    live.extend(closure(cache, idx.foreign_digests()));
    cache.write_atomic(&path, &idx.to_bytes())?;

    let mut removed_blobs = 0;
    let mut freed = 0;
    for (d, size) in &blobs {
        if !live.contains(d) {
            cache.discard(d, None)?;
            removed_blobs += 1;
            freed += size;
        }
    }
    // No pull runs (we hold the cache exclusively): whatever is in ingest/ is a leftover.
    let ingest = cache.private().join("ingest");
    for e in fs::read_dir(&ingest).into_iter().flatten().flatten() {
        let _ = fs::remove_file(e.path());
    }
    let report = Pruned {
        kept_images: idx.entries().len(),
        removed_images,
        removed_blobs,
        freed_bytes: freed,
        size_bytes: blobs.values().sum::<u64>() - freed,
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for r in &report.removed_images {
            println!("removed {r}");
        }
        println!(
            "removed {} images and {} blobs ({}); the cache holds {} images in {}",
            report.removed_images.len(),
            report.removed_blobs,
            human(report.freed_bytes),
            report.kept_images,
            human(report.size_bytes)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest whose layer blob is a FIFO and whose config is not JSON: the closure reads
    /// neither (a layer is never parsed to find children), so it neither blocks nor fails.
    #[test]
    fn only_manifests_and_indexes_are_read() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = Cache::open(d.path().join("oci")).expect("cache");
        let layer = Digest::of(b"layer");
        let config = Digest::of(b"config");
        let fifo = c.blob_path(&layer);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        c.put(&config, b"config").expect("config");
        let manifest = serde_json::json!({
            "config": {"digest": config.to_string()},
            "layers": [{"digest": layer.to_string()}],
        })
        .to_string();
        let m = Digest::of(manifest.as_bytes());
        c.put(&m, manifest.as_bytes()).expect("manifest");
        let t = std::time::Instant::now();
        let got = closure(&c, [m.clone()]);
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(got, BTreeSet::from([m, config, layer]));
    }
}

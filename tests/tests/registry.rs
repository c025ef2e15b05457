//! Registry pulls (`docker://127.0.0.1:PORT/...`) against a real local registry: Debian's
//! `docker-registry` started per test on a free loopback port, images pushed with skopeo, a
//! private blob cache per test (`XDG_CACHE_HOME`). Every built image is checked field by
//! field like the foundation's end-to-end tests.
//!
//! The tests are grouped by what of the registry protocol they exercise, one submodule each
//! (references, credentials, digests, the blob cache, faults); this file holds what they
//! share: the per-test context and its pulls, the hand-made image and its push, and what a
//! cache holds after a pull.
//!
//! Needs root, loop devices, the rootbox binary, its worker image, docker-registry, skopeo
//! and htpasswd; skips (or fails under `ROOTBOX_STRICT=1`) when one is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rootbox_tests::fixture::handmade;
use rootbox_tests::oci::{Compression, Image, LayerSpec, Written};
use rootbox_tests::registry::{self, FaultyFront, Registry};
use rootbox_tests::run::{expect_dir_holds, Outcome};
use rootbox_tests::Env;

/// Root, the registry tools, a temp dir with a private cache.
struct Ctx {
    env: Env,
    tmp: tempfile::TempDir,
}

impl Ctx {
    fn new(env: Env) -> Ctx {
        let tmp = tempfile::Builder::new().prefix("rootbox-registry-test-").tempdir().expect("tmp");
        Ctx { env, tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A fresh empty directory under the temp dir.
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.path(name);
        fs::create_dir_all(&d).expect("mkdir");
        d
    }

    /// `XDG_CACHE_HOME` for cache `name`; the blob cache is `<it>/rootbox/oci`.
    fn cache(&self, name: &str) -> PathBuf {
        self.dir(&format!("cache-{name}"))
    }

    /// A pull of `source` into a fresh output directory and a fresh cache, both named `name`.
    fn pull_fresh(&self, name: &str, source: &str, extra: &[&str]) -> Fresh {
        self.pull_fresh_under(&[], name, source, extra)
    }

    /// [`Ctx::pull_fresh`] started by `launcher` (see `registry::rootbox_under`).
    fn pull_fresh_under(
        &self,
        launcher: &[&str],
        name: &str,
        source: &str,
        extra: &[&str],
    ) -> Fresh {
        let (out_dir, cache) = (self.dir(name), self.cache(name));
        let vars = [("XDG_CACHE_HOME", cache.as_path())];
        let o = self.pull_vars_under(launcher, &vars, source, &out_dir.join("out.ext4"), extra);
        Fresh { o, out_dir, cache }
    }

    fn pull(&self, cache: &Path, source: &str, out: &Path, extra: &[&str]) -> Outcome {
        self.pull_vars(&[("XDG_CACHE_HOME", cache)], source, out, extra)
    }

    fn pull_vars(
        &self,
        vars: &[(&str, &Path)],
        source: &str,
        out: &Path,
        extra: &[&str],
    ) -> Outcome {
        self.pull_vars_under(&[], vars, source, out, extra)
    }

    fn pull_vars_under(
        &self,
        launcher: &[&str],
        vars: &[(&str, &Path)],
        source: &str,
        out: &Path,
        extra: &[&str],
    ) -> Outcome {
        let mut extra = extra.to_vec();
        extra.extend(["--plain-http", "--isolation", "container"]);
        // HOME points into the temp dir so no real ~/.docker/config.json is read.
        let home = self.dir("home");
        let mut v: Vec<(&str, &Path)> = vec![("HOME", &home), ("DOCKER_CONFIG", &home)];
        v.extend_from_slice(vars);
        registry::pull_under(launcher, &self.env, &v, source, out, &extra)
    }
}

/// What [`Ctx::pull_fresh`] ran and where.
struct Fresh {
    o: Outcome,
    out_dir: PathBuf,
    cache: PathBuf,
}

impl Fresh {
    fn out(&self) -> PathBuf {
        self.out_dir.join("out.ext4")
    }
}

/// Skips (or fails strictly) unless root and the registry tools are here.
macro_rules! require_registry {
    () => {{
        let env = ::rootbox_tests::require_root!();
        let name = ::std::thread::current().name().unwrap_or(module_path!()).to_string();
        if ::rootbox_tests::registry::require(&name).is_none() {
            return;
        }
        $crate::registry::Ctx::new(env)
    }};
}

// After the macro: the submodules use it (macro_rules! is in scope below its definition).
mod auth;
mod cache;
mod faults;
mod integrity;
mod references;
mod timing;

/// The hand-made image, gzip and zstd layers (skopeo would compress a plain tar layer on
/// push, changing its digest).
fn handmade_image() -> Image {
    let [l1, l2, l3]: [Vec<u8>; 3] = handmade::layers().try_into().expect("three layers");
    Image::new(vec![
        LayerSpec::new(l1, Compression::Gzip),
        LayerSpec::new(l2, Compression::Zstd),
        LayerSpec::new(l3, Compression::Gzip),
    ])
}

/// Writes `image` as an OCI layout tagged `tag` and pushes it as `dest`.
fn push(ctx: &Ctx, reg: &Registry, image: &Image, name: &str, dest: &str) -> Written {
    let layout = ctx.path(&format!("layout-{name}"));
    let w = image.write_oci(&layout, Some("t")).expect("write OCI layout");
    reg.push(&layout, "t", dest, false);
    w
}

fn blob_files(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache.join("rootbox/oci/blobs/sha256"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Temp files of downloads left in the cache (lock files are not data).
fn partial_files(cache: &Path) -> Vec<String> {
    fs::read_dir(cache.join("rootbox/oci/.rootbox/ingest"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

/// A failed pull left nothing: no output beside it, `digest` not in the cache, no partial
/// download.
fn expect_nothing_left(out_dir: &Path, cache: &Path, digest: &str) {
    expect_dir_holds(out_dir, &[]);
    let hex = digest.trim_start_matches("sha256:").to_string();
    assert!(!blob_files(cache).contains(&hex), "{digest} is in the cache");
    assert!(partial_files(cache).is_empty(), "partial downloads: {:?}", partial_files(cache));
}

fn cache_refs(cache: &Path) -> Vec<String> {
    let idx: serde_json::Value = fs::read(cache.join("rootbox/oci/index.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    idx["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    m["annotations"]["org.opencontainers.image.ref.name"].as_str().map(String::from)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `docker://` source for `name` (REPO:TAG) behind `front`.
fn via(front: &FaultyFront, name: &str) -> String {
    format!("docker://127.0.0.1:{}/{name}", front.port)
}

/// After a pull that met an endless reply: what `front` got out stays small, so rootbox
/// stopped reading (given a moment for the front to notice the hang-up).
fn expect_cut_off(front: &FaultyFront, what: &str) {
    std::thread::sleep(Duration::from_millis(300));
    let sent = front.sent();
    assert!(sent < 32 << 20, "{what}: rootbox read {sent} bytes of endless replies");
}

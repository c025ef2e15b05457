//! Registry pulls (`docker://127.0.0.1:PORT/...`) against a real local registry: Debian's
//! `docker-registry` started per test on a free loopback port, images pushed with skopeo, a
//! private blob cache per test (`XDG_CACHE_HOME`). Every built image is checked field by
//! field like the foundation's end-to-end tests.
//!
//! Needs root, loop devices, the rootbox binary, its worker image, docker-registry, skopeo
//! and htpasswd; skips (or fails under `ROOTBOX_STRICT=1`) when one is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rootbox_tests::digest::{sha256_digest, sha256_hex};
use rootbox_tests::fixture::{debian, handmade};
use rootbox_tests::layer::{Entry as E, LayerBuilder};
use rootbox_tests::model::Model;
use rootbox_tests::oci::{
    Compression, Image, LayerSpec, Written, MT_CONFIG, MT_INDEX, MT_MANIFEST,
};
use rootbox_tests::registry::{self, Fault, FaultReply, FaultyFront, Proxy, Registry, TokenGate};
use rootbox_tests::run::{
    expect_dir_holds, expect_failure, expect_fsck_clean, expect_success, json_strings,
    json_summary, Outcome,
};
use rootbox_tests::tree::{assert_same, Tree};
use rootbox_tests::{require_root, snapshot, Env};

use crate::util::check_image;

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
        let (out_dir, cache) = (self.dir(name), self.cache(name));
        let o = self.pull(&cache, source, &out_dir.join("out.ext4"), extra);
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
        let mut extra = extra.to_vec();
        extra.extend(["--plain-http", "--isolation", "container"]);
        // HOME points into the temp dir so no real ~/.docker/config.json is read.
        let home = self.dir("home");
        let mut v: Vec<(&str, &Path)> = vec![("HOME", &home), ("DOCKER_CONFIG", &home)];
        v.extend_from_slice(vars);
        registry::pull(&self.env, &v, source, out, &extra)
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
        let env = require_root!();
        let name = ::std::thread::current().name().unwrap_or(module_path!()).to_string();
        if registry::require(&name).is_none() {
            return;
        }
        Ctx::new(env)
    }};
}

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

/// A snapshot without `lost+found`, whose mtime is the build's own.
fn content_of(out: &Path) -> Tree {
    let mut t = snapshot::of_image(out).expect("snapshot of the built image");
    t.nodes.retain(|p, _| !p.starts_with("lost+found"));
    t
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

#[test]
fn registry_pull_by_tag_and_by_digest() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    let w = push(&ctx, &reg, &handmade_image(), "hand", "team/hand:v1");
    let cache = ctx.cache("a");

    let out_dir = ctx.dir("by-tag");
    let out = out_dir.join("out.ext4");
    let src = format!("docker://{}/team/hand:v1", reg.host());
    let o = ctx.pull(&cache, &src, &out, &["--json"]);
    expect_success(&o);
    expect_dir_holds(&out_dir, &["out.ext4"]);
    let v = json_summary(&o);
    assert_eq!(json_strings(&v, "layers"), w.layer_digests, "{}", o.describe());
    assert_eq!(json_strings(&v, "diff_ids"), w.diff_ids, "{}", o.describe());
    assert_eq!(v["source_digest"], w.manifest_digest.as_str(), "{}", o.describe());
    assert_eq!(v["source"], src.as_str());
    check_image("hand-made via docker:// by tag", &out, &handmade::expected());
    assert_eq!(cache_refs(&cache), [format!("{}/team/hand:v1", reg.host())]);
    // The cache is an OCI layout holding manifest, config and layers.
    let blobs = blob_files(&cache);
    for d in w.layer_digests.iter().chain([&w.manifest_digest, &w.config_digest]) {
        assert!(blobs.contains(&d.trim_start_matches("sha256:").to_string()), "{d} not cached");
    }

    // By digest, into another cache, text output.
    let out_dir = ctx.dir("by-digest");
    let out = out_dir.join("out.ext4");
    let src = format!("docker://{}/team/hand@{}", reg.host(), w.manifest_digest);
    let o = ctx.pull(&ctx.cache("b"), &src, &out, &[]);
    expect_success(&o);
    check_image("hand-made via docker:// by digest", &out, &handmade::expected());

    // A digest the registry does not have, and a tag it does not have.
    let missing = format!("docker://{}/team/hand@{}", reg.host(), sha256_digest(b"nothing"));
    let o = ctx.pull(&ctx.cache("b"), &missing, &ctx.dir("x").join("out.ext4"), &[]);
    expect_failure(&o, &[3], &["registry", &reg.host(), "team/hand", "manifest"]);
    let o = ctx.pull(
        &ctx.cache("b"),
        &format!("docker://{}/team/hand:nope", reg.host()),
        &ctx.dir("y").join("out.ext4"),
        &[],
    );
    expect_failure(&o, &[3], &["registry", "team/hand", "manifest nope"]);
    expect_dir_holds(&ctx.path("y"), &[]);
}

/// One single-file image for `arch`: its layer, config and manifest blobs in `dir`; returns
/// the manifest descriptor.
fn arch_image(dir: &Path, arch: &str) -> serde_json::Value {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("mkdir");
    let put = |b: &[u8]| {
        let d = sha256_digest(b);
        fs::write(blobs.join(d.trim_start_matches("sha256:")), b).expect("write blob");
        d
    };
    let tar = LayerBuilder::new()
        .extend([E::dir("etc"), E::file("etc/arch", format!("{arch}\n").as_bytes())])
        .finish();
    let gz = Compression::Gzip.compress(&tar);
    let layer = put(&gz);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&tar)]},
    }))
    .expect("json");
    let config_d = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_d, "size": config.len()},
        "layers": [{"mediaType": Compression::Gzip.media_type(), "digest": layer, "size": gz.len()}],
    }))
    .expect("json");
    let m = put(&manifest);
    serde_json::json!({"mediaType": MT_MANIFEST, "digest": m, "size": manifest.len(),
        "platform": {"os": "linux", "architecture": arch}})
}

#[test]
fn registry_multi_arch_index() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    let layout = ctx.dir("multi");
    let manifests = vec![arch_image(&layout, "amd64"), arch_image(&layout, "arm64")];
    let index = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}),
    )
    .expect("json");
    let index_d = sha256_digest(&index);
    fs::write(layout.join("blobs/sha256").join(index_d.trim_start_matches("sha256:")), &index)
        .expect("write index");
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let top = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"mediaType": MT_INDEX, "digest": index_d, "size": index.len(),
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).expect("json")).expect("index");
    reg.push(&layout, "multi", "multi:latest", true);
    let cache = ctx.cache("m");
    let src = format!("docker://{}/multi:latest", reg.host());

    for (arch, platform) in [("amd64", None), ("arm64", Some("linux/arm64"))] {
        let out_dir = ctx.dir(&format!("out-{arch}"));
        let out = out_dir.join("out.ext4");
        let mut extra = vec!["--json"];
        if let Some(p) = platform {
            extra.extend(["--platform", p]);
        }
        let o = ctx.pull(&cache, &src, &out, &extra);
        expect_success(&o);
        let v = json_summary(&o);
        let want = manifests.iter().find(|m| m["platform"]["architecture"] == arch).expect("m");
        assert_eq!(v["source_digest"], want["digest"], "{}", o.describe());
        expect_fsck_clean(&out);
        let actual = snapshot::of_image(&out).expect("snapshot");
        let got = actual.get("etc/arch").and_then(|n| n.sha256.clone());
        assert_eq!(got, Some(sha256_hex(format!("{arch}\n").as_bytes())), "{arch}");
        assert_eq!(actual.get("etc/arch").map(|n| n.mode), Some(0o644));
    }
    let out_dir = ctx.dir("out-s390x");
    let o = ctx.pull(&cache, &src, &out_dir.join("out.ext4"), &["--platform", "linux/s390x"]);
    expect_failure(&o, &[3], &["no manifest for linux/s390x", "linux/amd64", "linux/arm64"]);
    expect_dir_holds(&out_dir, &[]);
}

#[test]
fn registry_basic_auth() {
    let ctx = require_registry!();
    const PASS: &str = "s3cret-Pa55";
    let reg = Registry::start(Some(("alice", PASS)));
    push(&ctx, &reg, &handmade_image(), "hand", "private/hand:v1");
    let src = format!("docker://{}/private/hand:v1", reg.host());
    let no_secret = |o: &Outcome| {
        assert!(
            !o.stderr.contains(PASS) && !o.stdout.contains(PASS),
            "secret leaked:\n{}",
            o.describe()
        );
        assert!(!o.stderr.contains("wrong-pw"), "secret leaked:\n{}", o.describe());
    };

    // Right credentials on the command line.
    let out_dir = ctx.dir("ok");
    let creds = format!("alice:{PASS}");
    let o =
        ctx.pull(&ctx.cache("1"), &src, &out_dir.join("out.ext4"), &["--creds", &creds, "--json"]);
    expect_success(&o);
    no_secret(&o);
    check_image("hand-made via basic auth", &out_dir.join("out.ext4"), &handmade::expected());

    // Wrong credentials, and none: refused, the secret never printed, nothing written.
    for (name, extra) in [("wrong", vec!["--creds", "alice:wrong-pw"]), ("anon", vec![])] {
        let out_dir = ctx.dir(name);
        let o = ctx.pull(&ctx.cache(name), &src, &out_dir.join("out.ext4"), &extra);
        expect_failure(&o, &[3], &["refused access", &reg.host(), "private/hand"]);
        no_secret(&o);
        expect_dir_holds(&out_dir, &[]);
    }

    // From an auth file ($REGISTRY_AUTH_FILE), then from $DOCKER_CONFIG/config.json.
    let auth = format!(
        r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
        reg.host(),
        registry::base64(format!("alice:{PASS}").as_bytes())
    );
    let auth_file = ctx.path("auth.json");
    fs::write(&auth_file, &auth).expect("auth file");
    let docker_dir = ctx.dir("docker-config");
    fs::write(docker_dir.join("config.json"), &auth).expect("docker config");
    for (name, var, path) in [
        ("file", "REGISTRY_AUTH_FILE", auth_file.as_path()),
        ("docker", "DOCKER_CONFIG", docker_dir.as_path()),
    ] {
        let out_dir = ctx.dir(name);
        let cache = ctx.cache(name);
        let o = ctx.pull_vars(
            &[("XDG_CACHE_HOME", &cache), (var, path)],
            &src,
            &out_dir.join("out.ext4"),
            &[],
        );
        expect_success(&o);
        no_secret(&o);
        expect_fsck_clean(&out_dir.join("out.ext4"));
    }

    // From credential helpers: `credHelpers` for this registry, then a `credsStore` behind an
    // empty `auths` placeholder, as `docker login` leaves them. The helper logs what it was
    // asked; it knows nothing of other servers ("credentials not found": anonymous, refused).
    let bin = ctx.dir("helper-bin");
    let asked = ctx.path("helper-asked");
    let helper = bin.join("docker-credential-rbtest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" >> {asked}\n\
             if [ \"$server\" = \"{host}\" ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"{PASS}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            asked = asked.display(),
            host = reg.host(),
        ),
    )
    .expect("helper");
    let mut perms = fs::metadata(&helper).expect("helper").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&helper, perms).expect("chmod helper");
    let path = std::env::join_paths(
        std::iter::once(bin.clone())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH");
    let path = PathBuf::from(path);
    let configs = [
        ("helpers", format!(r#"{{"credHelpers":{{"{}":"rbtest"}}}}"#, reg.host())),
        ("store", format!(r#"{{"auths":{{"{}":{{}}}},"credsStore":"rbtest"}}"#, reg.host())),
    ];
    for (name, config) in configs {
        let dir = ctx.dir(&format!("config-{name}"));
        fs::write(dir.join("config.json"), config).expect("config.json");
        let out_dir = ctx.dir(name);
        let cache = ctx.cache(name);
        let o = ctx.pull_vars(
            &[("XDG_CACHE_HOME", &cache), ("DOCKER_CONFIG", &dir), ("PATH", &path)],
            &src,
            &out_dir.join("out.ext4"),
            &[],
        );
        expect_success(&o);
        no_secret(&o);
        check_image(
            &format!("hand-made via {name}"),
            &out_dir.join("out.ext4"),
            &handmade::expected(),
        );
    }
    assert_eq!(
        fs::read_to_string(&asked).expect("helper log"),
        format!("{0}\n{0}\n", reg.host()),
        "each helper was asked for this registry once"
    );
    // A helper named but missing: a clear error naming the helper and the file.
    let dir = ctx.dir("config-missing");
    fs::write(dir.join("config.json"), r#"{"credsStore":"rootbox-absent"}"#).expect("config");
    let out_dir = ctx.dir("missing");
    let o = ctx.pull_vars(
        &[("XDG_CACHE_HOME", &ctx.cache("missing")), ("DOCKER_CONFIG", &dir)],
        &src,
        &out_dir.join("out.ext4"),
        &[],
    );
    expect_failure(&o, &[3], &["docker-credential-rootbox-absent is not on $PATH", "config.json"]);
    expect_dir_holds(&out_dir, &[]);
}

#[test]
fn registry_tampered_blob_is_refused_and_not_cached() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    let w = push(&ctx, &reg, &handmade_image(), "hand", "hand:v1");
    let bad = &w.layer_digests[1];
    let stored = reg.storage_blob(bad);
    let mut bytes = fs::read(&stored).expect("stored blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&stored, bytes).expect("tamper");

    let cache = ctx.cache("t");
    let out_dir = ctx.dir("out");
    let o = ctx.pull(
        &cache,
        &format!("docker://{}/hand:v1", reg.host()),
        &out_dir.join("out.ext4"),
        &[],
    );
    expect_failure(&o, &[3], &["digest mismatch", bad]);
    expect_nothing_left(&out_dir, &cache, bad);
    assert!(cache_refs(&cache).is_empty(), "an incomplete image was recorded");
}

#[test]
fn registry_cold_then_warm_then_corrupt_cache() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    let w = push(&ctx, &reg, &handmade_image(), "hand", "hand:v1");
    let cache = ctx.cache("w");
    let src = format!("docker://{}/hand:v1", reg.host());
    let before = reg.blob_gets();

    let cold_dir = ctx.dir("cold");
    expect_success(&ctx.pull(&cache, &src, &cold_dir.join("out.ext4"), &[]));
    let cold = reg.blob_gets() - before;
    assert_eq!(cold, w.layer_digests.len() + 1, "a cold pull downloads config and layers once");

    let warm_dir = ctx.dir("warm");
    expect_success(&ctx.pull(&cache, &src, &warm_dir.join("out.ext4"), &[]));
    assert_eq!(reg.blob_gets() - before, cold, "the warm pull downloaded a blob");
    let a = content_of(&cold_dir.join("out.ext4"));
    let b = content_of(&warm_dir.join("out.ext4"));
    assert_same("warm vs cold", &a, &b);
    check_image("warm pull", &warm_dir.join("out.ext4"), &handmade::expected());

    // A cached layer gone bad is discarded and fetched again, once.
    let cached = cache
        .join("rootbox/oci/blobs/sha256")
        .join(w.layer_digests[0].trim_start_matches("sha256:"));
    let mut bytes = fs::read(&cached).expect("cached blob");
    bytes[10] ^= 1;
    fs::write(&cached, bytes).expect("corrupt the cache");
    let fix_dir = ctx.dir("fixed");
    let o = ctx.pull(&cache, &src, &fix_dir.join("out.ext4"), &["--progress"]);
    expect_success(&o);
    assert_eq!(
        reg.blob_gets() - before,
        cold + 1,
        "exactly the corrupt blob is fetched again:\n{}",
        o.describe()
    );
    assert_eq!(sha256_digest(&fs::read(&cached).expect("re-fetched")), w.layer_digests[0]);
    check_image("after a corrupt cache", &fix_dir.join("out.ext4"), &handmade::expected());

    // cache ls lists the image; prune --older-than 0s empties the cache.
    let xdg = [("XDG_CACHE_HOME", cache.as_path())];
    let o = registry::rootbox(&ctx.env, &xdg, &["cache", "ls", "--json"]);
    expect_success(&o);
    let v = json_summary(&o);
    assert_eq!(v["images"][0]["reference"], format!("{}/hand:v1", reg.host()));
    assert_eq!(v["images"][0]["complete"], true, "{}", o.describe());
    let o = registry::rootbox(&ctx.env, &xdg, &["cache", "prune"]);
    expect_success(&o);
    assert!(!blob_files(&cache).is_empty(), "a plain prune keeps used images");
    let o = registry::rootbox(&ctx.env, &xdg, &["cache", "prune", "--older-than", "0s"]);
    expect_success(&o);
    assert!(blob_files(&cache).is_empty(), "{:?}\n{}", blob_files(&cache), o.describe());
    assert!(cache_refs(&cache).is_empty());
}

#[test]
fn registry_concurrent_pulls_share_one_cache() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    push(&ctx, &reg, &handmade_image(), "hand", "hand:v1");
    let cache = ctx.cache("c");
    let src = format!("docker://{}/hand:v1", reg.host());
    let outs: Vec<PathBuf> = (0..8).map(|i| ctx.dir(&format!("out{i}")).join("out.ext4")).collect();
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let hs: Vec<_> =
            outs.iter().map(|out| s.spawn(|| ctx.pull(&cache, &src, out, &[]))).collect();
        hs.into_iter().map(|h| h.join().expect("pull thread")).collect()
    });
    for o in &results {
        expect_success(o);
    }
    let first = content_of(&outs[0]);
    assert_same("concurrent pull 1 vs expectation", &handmade::expected(), &first);
    for (i, out) in outs.iter().enumerate().skip(1) {
        expect_fsck_clean(out);
        let t = content_of(out);
        assert_same(&format!("concurrent pull {} vs 1", i + 1), &first, &t);
    }
    assert!(partial_files(&cache).is_empty());
    assert_eq!(cache_refs(&cache).len(), 1, "one index.json entry for one image");
}

#[test]
fn registry_stopped_mid_pull() {
    let ctx = require_registry!();
    let mut reg = Registry::start(None);
    // 24 MiB that do not compress, so the layer takes seconds through a 4 MiB/s proxy.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..24 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let tar = LayerBuilder::new().extend([E::file("big", &big)]).finish();
    let image = Image::new(vec![LayerSpec::new(tar, Compression::Gzip)]);
    let w = push(&ctx, &reg, &image, "big", "big:v1");
    let proxy = Proxy::start(reg.port, Some(4 << 20));
    let cache = ctx.cache("s");
    let out_dir = ctx.dir("out");
    let src = format!("docker://127.0.0.1:{}/big:v1", proxy.port);
    let o = std::thread::scope(|s| {
        let h = s.spawn(|| ctx.pull(&cache, &src, &out_dir.join("out.ext4"), &[]));
        let start = Instant::now();
        while proxy.forwarded() < 4 << 20 && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        reg.stop();
        proxy.stop();
        h.join().expect("pull thread")
    });
    expect_failure(
        &o,
        &[3],
        &["registry", &format!("127.0.0.1:{}", proxy.port), "big", &w.layer_digests[0]],
    );
    expect_nothing_left(&out_dir, &cache, &w.layer_digests[0]);
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

/// Transient failures (503 and 502 on manifests, 429 on blobs) are retried and the pull
/// succeeds; a blob that keeps failing gives one error naming registry, repository and blob
/// after a bounded number of tries, with no output and nothing of it in the cache.
#[test]
fn registry_retries_transient_failures_then_gives_up() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    let w = push(&ctx, &reg, &handmade_image(), "hand", "team/hand:v1");

    let front = FaultyFront::start(
        reg.port,
        vec![
            Fault::new("/manifests/", 1, FaultReply::Status(503)),
            Fault::new("/manifests/", 1, FaultReply::Status(502)),
            Fault::new("/blobs/", 2, FaultReply::Status(429)),
        ],
    );
    let p = ctx.pull_fresh("ok", &via(&front, "team/hand:v1"), &[]);
    expect_success(&p.o);
    assert_eq!(front.faults_served(), 4, "every injected fault was met and retried");
    check_image("hand-made through 5xx and 429", &p.out(), &handmade::expected());

    let bad = &w.layer_digests[1];
    let front = FaultyFront::start(
        reg.port,
        vec![Fault::new(&format!("/blobs/{bad}"), usize::MAX, FaultReply::Status(503))],
    );
    let t = Instant::now();
    let p = ctx.pull_fresh("bad", &via(&front, "team/hand:v1"), &[]);
    let took = t.elapsed();
    let host = format!("127.0.0.1:{}", front.port);
    expect_failure(&p.o, &[3], &[&host, "team/hand", bad, "503", "gave up after 5 attempts"]);
    assert_eq!(front.faults_served(), 5, "tries per blob are bounded");
    assert!(took < Duration::from_secs(30), "backoff is bounded, took {took:?}");
    expect_nothing_left(&p.out_dir, &p.cache, bad);
}

/// A registry answering with endless bodies: a manifest (refused past the 8 MiB bound on JSON
/// documents), a blob (cut off at its descriptor's size) and a blob's 500 error reply (read up
/// to 64 KiB per try). Each time rootbox stops reading: what the front got out stays small.
#[test]
fn registry_endless_replies_are_cut_off() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    let w = push(&ctx, &reg, &handmade_image(), "hand", "hand:v1");
    let layer = &w.layer_digests[0];
    let cases = [
        ("manifest", "/manifests/", 200, vec!["manifest v1", "larger than 8388608 bytes"]),
        ("blob", layer.as_str(), 200, vec!["layer 1", "size mismatch"]),
        ("error", layer.as_str(), 500, vec![layer.as_str(), "500", "gave up after 5 attempts"]),
    ];
    for (name, path, code, expect) in cases {
        let front = FaultyFront::start(
            reg.port,
            vec![Fault::new(path, usize::MAX, FaultReply::Endless(code))],
        );
        let p = ctx.pull_fresh(name, &via(&front, "hand:v1"), &[]);
        expect_failure(&p.o, &[3], &expect);
        expect_nothing_left(&p.out_dir, &p.cache, layer);
        expect_cut_off(&front, name);
    }
}

/// A manifest whose `Docker-Content-Digest` header names other bytes than the body: refused
/// as a digest mismatch, nothing cached.
#[test]
fn registry_manifest_digest_header_must_match() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    let w = push(&ctx, &reg, &handmade_image(), "hand", "hand:v1");
    let hex = w.manifest_digest.trim_start_matches("sha256:");
    let body = fs::read(ctx.path("layout-hand").join("blobs/sha256").join(hex)).expect("manifest");
    let lie = format!("sha256:{}", "0".repeat(64));
    let headers = format!("Content-Type: {MT_MANIFEST}\r\nDocker-Content-Digest: {lie}\r\n");
    let front = FaultyFront::start(
        reg.port,
        vec![Fault::new("/manifests/v1", 1, FaultReply::Canned { headers, body })],
    );
    let p = ctx.pull_fresh("lie", &via(&front, "hand:v1"), &[]);
    expect_failure(&p.o, &[3], &["manifest v1", "digest mismatch", &lie, &w.manifest_digest]);
    expect_nothing_left(&p.out_dir, &p.cache, &w.manifest_digest);
}

/// The bearer-token flow as the distribution spec has it: a `401` challenge names a token
/// realm, the token is fetched with the basic credentials and then sent on every request.
/// Right credentials pull (few token requests: the token is kept), wrong ones are refused
/// clearly, and an endless token reply is cut off.
#[test]
fn registry_bearer_token_flow() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    push(&ctx, &reg, &handmade_image(), "hand", "team/hand:v1");
    const PASS: &str = "t0ken-Pa55";
    let gate = TokenGate { token: "tok-123".into(), creds: Some(("bob".into(), PASS.into())) };
    let creds = format!("bob:{PASS}");

    let front = FaultyFront::start_gated(reg.port, vec![], Some(gate.clone()));
    let p = ctx.pull_fresh("ok", &via(&front, "team/hand:v1"), &["--creds", &creds]);
    expect_success(&p.o);
    assert!(!p.o.stderr.contains(PASS) && !p.o.stderr.contains("tok-123"), "{}", p.o.describe());
    check_image("hand-made via a bearer token", &p.out(), &handmade::expected());
    let tokens = front.tokens_issued();
    assert!((1..=4).contains(&tokens), "{tokens} token requests for one pull");

    let p = ctx.pull_fresh("wrong", &via(&front, "team/hand:v1"), &["--creds", "bob:nope"]);
    expect_failure(&p.o, &[3], &["refused access", "team/hand", "--creds"]);
    assert!(!p.o.stderr.contains("nope"), "{}", p.o.describe());
    expect_dir_holds(&p.out_dir, &[]);

    let front = FaultyFront::start_gated(
        reg.port,
        vec![Fault::new("/token", usize::MAX, FaultReply::Endless(200))],
        Some(gate),
    );
    let p = ctx.pull_fresh("endless", &via(&front, "team/hand:v1"), &["--creds", &creds]);
    expect_failure(&p.o, &[3], &["token", "larger than 1048576 bytes"]);
    expect_dir_holds(&p.out_dir, &[]);
    expect_cut_off(&front, "token");
}

/// Seconds of one pull, checked for success.
fn timed(ctx: &Ctx, cache: &Path, src: &str, name: &str, extra: &[&str]) -> (f64, PathBuf) {
    let out = ctx.dir(name).join("out.ext4");
    let t = Instant::now();
    let o = ctx.pull(cache, src, &out, extra);
    let secs = t.elapsed().as_secs_f64();
    expect_success(&o);
    (secs, out)
}

/// The Debian minbase image (three gzip layers) through the registry: checked field by field,
/// cold and warm (the warm pull downloads no blob), and with `--fetch-first`. Prints the
/// times; what pipelining gains is measured by `make bench-pull`, not here.
#[test]
fn registry_debian_minbase_cold_warm() {
    let ctx = require_registry!();
    let tar =
        fs::read(debian::ensure_tar(&ctx.env.workspace).expect("Debian fixture")).expect("tar");
    let expected = Model::from_layers(&[&tar]).expect("model").tree();
    let layers = debian::split(&tar).expect("split");
    let image = Image::from_tars(&layers, Compression::Gzip);
    let reg = Registry::start(None);
    let w = push(&ctx, &reg, &image, "debian", "debian:bookworm");
    let src = format!("docker://{}/debian:bookworm", reg.host());

    let before = reg.blob_gets();
    let (cold, out) = timed(&ctx, &ctx.cache("a"), &src, "cold", &[]);
    check_image("Debian via docker:// (cold)", &out, &expected);
    let mid = reg.blob_gets();
    assert_eq!(mid - before, w.layer_digests.len() + 1);
    let (warm, out) = timed(&ctx, &ctx.cache("a"), &src, "warm", &[]);
    assert_eq!(reg.blob_gets(), mid, "the warm pull downloaded a blob");
    check_image("Debian via docker:// (warm)", &out, &expected);
    let (first, out_first) = timed(&ctx, &ctx.cache("b"), &src, "fetch-first", &["--fetch-first"]);
    check_image("Debian via docker:// (--fetch-first)", &out_first, &expected);
    // Streaming starts from a scratch filesystem sized for the worst case (32 × compressed);
    // the shrink must still reach what the exactly sized one reaches (the journal, sized
    // from the estimate, may be 16 MiB larger).
    let size = |p: &Path| fs::metadata(p).expect("output").len();
    let (streamed, exact) = (size(&out), size(&out_first));
    assert!(
        streamed <= exact + exact / 10,
        "the streamed pull's image is {streamed} bytes, the --fetch-first one {exact}"
    );
    let compressed: usize = image.layers.iter().map(|l| l.blob.len()).sum();
    eprintln!(
        "registry timings (Debian minbase, 3 gzip layers, {:.1} MiB compressed, loopback): \
         cold {cold:.2} s, warm {warm:.2} s, cold --fetch-first {first:.2} s",
        compressed as f64 / f64::from(1 << 20)
    );
}

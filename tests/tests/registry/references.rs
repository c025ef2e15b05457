//! What a `docker://` reference resolves to: a tag and a digest (the summary and the cache
//! name the pushed manifest and layers; a digest or tag the registry lacks is refused), and
//! the platform a multi-arch index is pulled for.

use std::fs;
use std::path::Path;

use rootbox_tests::digest::{sha256_digest, sha256_hex};
use rootbox_tests::fixture::handmade;
use rootbox_tests::layer::{Entry as E, LayerBuilder};
use rootbox_tests::oci::{Compression, MT_CONFIG, MT_INDEX, MT_MANIFEST};
use rootbox_tests::registry::Registry;
use rootbox_tests::run::{
    expect_dir_holds, expect_failure, expect_fsck_clean, expect_success, json_strings, json_summary,
};
use rootbox_tests::snapshot;

use super::{blob_files, cache_refs, handmade_image, push};
use crate::util::check_image;

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

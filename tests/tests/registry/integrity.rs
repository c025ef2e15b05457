//! Bytes that are not what their digest says: a blob tampered with in the registry's storage,
//! a manifest whose `Docker-Content-Digest` header names other bytes. Both are refused and
//! nothing of them is cached.

use std::fs;

use rootbox_tests::oci::MT_MANIFEST;
use rootbox_tests::registry::{Fault, FaultReply, FaultyFront, Registry};
use rootbox_tests::run::expect_failure;

use super::{cache_refs, expect_nothing_left, handmade_image, push, via};

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

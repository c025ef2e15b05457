//! A registry that misbehaves mid-pull: stopped while a layer streams, answering 5xx and 429
//! (retried, then given up on after a bounded number of tries), sending endless bodies (cut
//! off). Each failure names registry, repository and blob and leaves nothing behind.

use std::time::{Duration, Instant};

use rootbox_tests::fixture::handmade;
use rootbox_tests::layer::{Entry as E, LayerBuilder};
use rootbox_tests::oci::{Compression, Image, LayerSpec};
use rootbox_tests::registry::{Fault, FaultReply, FaultyFront, Proxy, Registry};
use rootbox_tests::run::{expect_failure, expect_success};

use super::{expect_cut_off, expect_nothing_left, handmade_image, push, via};
use crate::util::check_image;

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

//! The blob cache: a cold pull downloads each blob once, a warm one none, a corrupt cached
//! layer is fetched again, `cache ls` and `cache prune` see what is there; eight concurrent
//! pulls share one cache; and the Debian minbase image cold, warm and with `--fetch-first`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rootbox_tests::digest::sha256_digest;
use rootbox_tests::fixture::{debian, handmade};
use rootbox_tests::model::Model;
use rootbox_tests::oci::{Compression, Image};
use rootbox_tests::registry::{self, Registry};
use rootbox_tests::run::{expect_fsck_clean, expect_success, file_sha256, json_summary, Outcome};
use rootbox_tests::snapshot;
use rootbox_tests::tree::{assert_same, Tree};

use super::{blob_files, cache_refs, handmade_image, partial_files, push, Ctx};
use crate::util::check_image;

/// A snapshot without `lost+found`, whose mtime is the build's own.
fn content_of(out: &Path) -> Tree {
    let mut t = snapshot::of_image(out).expect("snapshot of the built image");
    t.nodes.retain(|p, _| !p.starts_with("lost+found"));
    t
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
    let sha = |d: &Path| file_sha256(&d.join("out.ext4"));
    assert_eq!(sha(&cold_dir), sha(&warm_dir), "the cold and the warm pull differ in bytes");
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
        assert_eq!(file_sha256(out), file_sha256(&outs[0]), "concurrent pull {} vs 1", i + 1);
    }
    assert!(partial_files(&cache).is_empty());
    assert_eq!(cache_refs(&cache).len(), 1, "one index.json entry for one image");
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
/// Debian in 8 even gzip layers, streamed: the scratch filesystem is sized for the worst case
/// (34.5 GiB here), the content lands in a few of its groups, and the shrink must still
/// reach the content's size. (With ext4's `mb_prefetch` at 0 the allocator spread the content
/// so that resize2fs ran out of space shrinking: `make bench`'s registry pull found it.)
#[test]
fn registry_debian_in_eight_layers_streams_into_a_large_scratch_and_shrinks() {
    let ctx = require_registry!();
    let tar =
        fs::read(debian::ensure_tar(&ctx.env.workspace).expect("Debian fixture")).expect("tar");
    let expected = Model::from_layers(&[&tar]).expect("model").tree();
    let layers = debian::split_even(&tar, 8).expect("split");
    let reg = Registry::start(None);
    push(&ctx, &reg, &Image::from_tars(&layers, Compression::Gzip), "debian8", "debian:eight");
    let src = format!("docker://{}/debian:eight", reg.host());
    let (_, out) = timed(&ctx, &ctx.cache("a"), &src, "streamed", &[]);
    check_image("Debian in 8 layers via docker://", &out, &expected);
}

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
    let (cold, out_cold) = timed(&ctx, &ctx.cache("a"), &src, "cold", &[]);
    check_image("Debian via docker:// (cold)", &out_cold, &expected);
    let mid = reg.blob_gets();
    assert_eq!(mid - before, w.layer_digests.len() + 1);
    let (warm, out) = timed(&ctx, &ctx.cache("a"), &src, "warm", &[]);
    assert_eq!(reg.blob_gets(), mid, "the warm pull downloaded a blob");
    check_image("Debian via docker:// (warm)", &out, &expected);
    let (first, out_first) = timed(&ctx, &ctx.cache("b"), &src, "fetch-first", &["--fetch-first"]);
    check_image("Debian via docker:// (--fetch-first)", &out_first, &expected);
    // Streaming starts from a scratch filesystem sized for the worst case (32 × compressed),
    // the others from one sized exactly; the image's bytes must not depend on which.
    let sha = |p: &Path| file_sha256(p);
    for (what, p) in [("warm", &out), ("--fetch-first", &out_first)] {
        assert_eq!(sha(&out_cold), sha(p), "the cold streamed pull and the {what} one differ");
    }
    let compressed: usize = image.layers.iter().map(|l| l.blob.len()).sum();
    eprintln!(
        "registry timings (Debian minbase, 3 gzip layers, {:.1} MiB compressed, loopback): \
         cold {cold:.2} s, warm {warm:.2} s, cold --fetch-first {first:.2} s",
        compressed as f64 / f64::from(1 << 20)
    );
}

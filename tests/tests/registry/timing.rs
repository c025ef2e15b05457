//! A build's bytes do not follow the clock: the same image pulled with a layer held back for
//! longer than the kernel's journal commit interval (5 s) builds to the same ext4 bytes as a
//! pull whose layers arrive at once. The kernel returns freed blocks to the allocator only
//! when the journal commits, so the worker decides when frees happen (its graveyard, see
//! worker/src/apply/graveyard.rs). Each part of the image fails this test on a worker that
//! leaves one of those points to the clock (each tried): files deleted by whiteouts (40 new
//! files moved, without the graveyard), more removals than the graveyard holds at once (80
//! moved, without its commit), and xattr blocks freed by a later layer's metadata (9 moved,
//! without the commit after an xattr change).

use std::time::{Duration, Instant};

use rootbox_tests::layer::{Entry, LayerBuilder};
use rootbox_tests::oci::{Compression, Image, LayerSpec};
use rootbox_tests::registry::{Fault, FaultReply, FaultyFront, Registry};
use rootbox_tests::run::{expect_fsck_clean, expect_success, file_sha256, run_with};

use super::{push, via};

/// Bytes that neither compress away nor read as holes (xorshift64).
fn noise(mut seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    seed |= 1;
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

const FILES: u64 = 40;

/// Files removed at once by one whiteout of their directory.
const MANY: u64 = 1500;

/// Directories whose xattrs need a block of their own (more than fits in the inode).
const XATTR_DIRS: u64 = 8;

/// Files, and directories with an xattr block; the files' whiteouts, and the directories
/// again without xattrs (which frees their blocks); new files, large and small, which may
/// land in the blocks the second layer freed.
fn churn_image() -> Image {
    let mut first = LayerBuilder::new();
    for i in 0..XATTR_DIRS {
        first.push(Entry::dir(&format!("attrs{i}")).xattr("user.big", &noise(500 + i, 1500)));
    }
    first.push(Entry::dir("old"));
    for i in 0..FILES {
        first.push(Entry::file(&format!("old/f{i}"), &noise(i, 256 << 10)));
    }
    // More than the applier holds before it frees what it removed (512), twice over.
    first.push(Entry::dir("many"));
    for i in 0..MANY {
        first.push(Entry::file(&format!("many/m{i}"), &noise(3000 + i, 3000)));
    }
    let mut second = LayerBuilder::new();
    for i in 0..XATTR_DIRS {
        second.push(Entry::dir(&format!("attrs{i}")));
    }
    for i in 0..FILES {
        second.push(Entry::whiteout(&format!("old/f{i}")));
    }
    second.push(Entry::whiteout("many"));
    let mut third = LayerBuilder::new();
    third.push(Entry::dir("new"));
    for i in 0..FILES {
        third.push(Entry::file(&format!("new/f{i}"), &noise(1000 + i, 96 << 10)));
        third.push(Entry::file(&format!("new/s{i}"), &noise(2000 + i, 3000)));
    }
    Image::new(
        [first, second, third]
            .iter_mut()
            .map(|l| LayerSpec::new(l.finish(), Compression::Gzip))
            .collect(),
    )
}

#[test]
fn a_layer_held_back_past_a_journal_commit_builds_the_same_bytes() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    let w = push(&ctx, &reg, &churn_image(), "churn", "churn:v1");
    let third = &w.layer_digests[2];
    let hold = Duration::from_secs(7);
    // Two fronts, so the two sources differ only in their port (which the identity ignores).
    let at_once = FaultyFront::start(reg.port, vec![]);
    let front = FaultyFront::start(
        reg.port,
        vec![Fault::new(&format!("/blobs/{third}"), 1, FaultReply::Late(hold))],
    );

    let prompt = ctx.pull_fresh("prompt", &via(&at_once, "churn:v1"), &[]);
    expect_success(&prompt.o);
    // Under the lowest open-file limit the worker accepts, which the applier's release
    // points must not depend on: 1024, soft and hard.
    let t = Instant::now();
    let limit = ["prlimit", "--nofile=1024:1024"];
    let late = ctx.pull_fresh_under(&limit, "late", &via(&front, "churn:v1"), &[]);
    let took = t.elapsed();
    expect_success(&late.o);
    assert_eq!(front.faults_served(), 1, "the second pull's third layer was held back");
    assert!(took >= hold, "the pull took {took:?}, less than the hold");

    let late_out = late.out();
    expect_fsck_clean(&late_out);
    if file_sha256(&prompt.out()) != file_sha256(&late_out) {
        let d =
            run_with(&ctx.env.bin, &["diff".into(), prompt.out().into(), late_out.into()], None);
        panic!("a late layer changed the image's bytes:\n{}", d.describe());
    }
}

//! The applier's rules on a plain temp dir, without root: owners and device nodes go through
//! the recorder ([`super::ops::recorder`]), everything else is real. Each result is compared
//! with the independent model of `rootbox-tests` (its own tar reader and overlay rules), or,
//! where the model does not apply (devices out of range, sparse files with terabytes of
//! holes, global headers), with the exact expectation.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rootbox_proto::{Limits, SanitisedKind};
use rootbox_tests::layer::{Entry as E, LayerBuilder, DEFAULT_MTIME};
use rootbox_tests::model::Model;
use rootbox_tests::tree::{diff, Kind, Node, Tree};
use rustix::fs::FileType;

use super::ops::recorder::Recorder;
use super::report::Report;
use super::{Applier, ApplyError};

fn layer(entries: Vec<E>) -> Vec<u8> {
    LayerBuilder::new().extend(entries).finish()
}

struct Applied {
    dir: tempfile::TempDir,
    tree: Tree,
    report: Report,
}

/// Applies `layers` into a fresh temp dir.
fn apply_only(layers: &[Vec<u8>]) -> Result<(tempfile::TempDir, Applier<Recorder>), ApplyError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Applier::new(dir.path(), Limits::default(), Recorder::default())?;
    for (i, l) in layers.iter().enumerate() {
        a.apply_layer(i as u32, &l[..])?;
    }
    a.finish()?;
    Ok((dir, a))
}

/// Applies `layers` and snapshots the result, owners and devices as recorded.
fn apply(layers: &[Vec<u8>]) -> Result<Applied, ApplyError> {
    let (dir, mut a) = apply_only(layers)?;
    let tree = snapshot(dir.path(), a.ops());
    let report = std::mem::take(&mut a.report);
    Ok(Applied { dir, tree, report })
}

fn snapshot(root: &Path, rec: &Recorder) -> Tree {
    let mut tree = rootbox_tests::snapshot::scan(root).expect("scan");
    for (path, node) in tree.nodes.iter_mut() {
        let ino = std::fs::symlink_metadata(root.join(path)).expect("lstat").ino();
        // Unrecorded: a directory the applier made for a parent, as root in the worker.
        (node.uid, node.gid) = rec.owners.get(&ino).copied().unwrap_or((0, 0));
        if let Some((ftype, dev)) = rec.devices.get(&ino) {
            node.kind = if *ftype == FileType::CharacterDevice { Kind::Char } else { Kind::Block };
            node.rdev = Some(rootbox_tests::snapshot::split_dev(*dev));
        }
    }
    tree
}

fn model(layers: &[Vec<u8>]) -> Tree {
    let mut t = Model::from_layers(layers).expect("model").tree();
    t.forget_dir_mtimes();
    t
}

fn same_as_model(layers: &[Vec<u8>]) -> Applied {
    let got = apply(layers).expect("applies");
    let mut seen = got.tree.clone();
    seen.forget_dir_mtimes();
    let d = diff(&model(layers), &seen);
    assert!(d.is_empty(), "applier and model differ:\n{}", d.join("\n"));
    got
}

fn names(t: &Tree) -> Vec<String> {
    t.nodes.keys().map(|p| p.display().to_string()).collect()
}

#[test]
fn whiteouts_hide_lower_layers_only() {
    let l1 = layer(vec![E::dir("d"), E::file("d/a", b"1"), E::file("d/b", b"2")]);
    let l2 = layer(vec![E::file("d/c", b"3"), E::whiteout("d/c"), E::whiteout("d/a")]);
    let got = same_as_model(&[l1, l2]);
    assert_eq!(names(&got.tree), ["d", "d/b", "d/c"]);
}

#[test]
fn a_whiteout_after_its_path_was_recreated_still_hides_the_lower_content() {
    // The case: umoci (and the OCI rule) give d/ holding only new.
    let l1 = layer(vec![E::dir("d").mode(0o700).owner(5, 5), E::file("d/old", b"old")]);
    let l2 = layer(vec![
        E::dir("d").mode(0o750).owner(7, 7),
        E::file("d/new", b"new"),
        E::whiteout("d"),
    ]);
    let got = same_as_model(&[l1, l2]);
    assert_eq!(names(&got.tree), ["d", "d/new"]);
    assert_eq!((got.tree.get("d").map(|n| (n.mode, n.uid))), Some((0o750, 7)));
}

#[test]
fn a_whiteout_of_a_directory_the_layer_only_used_as_a_parent() {
    let l1 = layer(vec![
        E::dir("d").mode(0o700).owner(5, 5).xattr("user.lower", b"1"),
        E::file("d/old", b""),
        E::dir("d/sub").mode(0o711),
        E::file("d/sub/x", b""),
    ]);
    let l2 = layer(vec![E::file("d/new", b""), E::file("d/sub/y", b""), E::whiteout("d")]);
    let got = same_as_model(&[l1, l2]);
    assert_eq!(names(&got.tree), ["d", "d/new", "d/sub", "d/sub/y"]);
    for dir in ["d", "d/sub"] {
        let n = got.tree.get(dir).expect("dir");
        assert_eq!((n.mode, n.uid, n.xattrs.len()), (0o755, 0, 0), "{dir} is implicit again");
    }
}

#[test]
fn an_opaque_marker_anywhere_in_the_layer_hides_lower_content() {
    let l1 =
        layer(vec![E::dir("o"), E::file("o/old", b""), E::dir("o/sub"), E::file("o/sub/x", b"")]);
    let l2 =
        layer(vec![E::dir("o"), E::file("o/new1", b""), E::opaque("o"), E::file("o/new2", b"")]);
    let got = same_as_model(&[l1, l2]);
    assert_eq!(names(&got.tree), ["o", "o/new1", "o/new2"]);
}

#[test]
fn type_flips_and_last_wins() {
    let l1 = layer(vec![E::file("x", b"f"), E::dir("y"), E::file("y/in", b""), E::file("z", b"1")]);
    let l2 = layer(vec![E::dir("x"), E::symlink("y", "x"), E::file("z", b"2").mode(0o600)]);
    let l3 = layer(vec![E::file("z", b"3"), E::file("z", b"4").mode(0o640).owner(9, 9)]);
    let got = same_as_model(&[l1, l2, l3]);
    assert_eq!(got.tree.get("z"), Some(&Node::file(b"4", 0o640).owner(9, 9).at(DEFAULT_MTIME)));
}

#[test]
fn a_directory_over_a_directory_keeps_content_and_takes_only_the_new_metadata() {
    let l1 = layer(vec![E::dir("d").mode(0o700).xattr("user.old", b"1"), E::file("d/f", b"")]);
    let l2 = layer(vec![E::dir("d").mode(0o1777).owner(5, 6).xattr("user.new", b"2")]);
    let got = same_as_model(&[l1, l2]);
    let d = got.tree.get("d").expect("d");
    assert_eq!(d.xattrs.keys().collect::<Vec<_>>(), ["user.new"], "the old xattr is gone");
}

#[test]
fn hardlinks_within_and_across_layers() {
    let l1 = layer(vec![
        E::dir("etc"),
        E::file("etc/passwd", b"pw").mode(0o600),
        E::symlink("evil", "/"),
    ]);
    let l2 = layer(vec![
        E::hardlink("a", "/etc/passwd"),
        E::hardlink("b", "evil/etc/passwd"),
        E::hardlink("c", "a"),
    ]);
    let got = same_as_model(&[l1, l2]);
    assert_eq!(got.tree.links.len(), 1);
    let missing = apply(&[layer(vec![E::hardlink("a", "nope")])]);
    assert!(
        matches!(missing, Err(ApplyError::Refused { ref why, .. }) if why.contains("does not exist")),
        "{:?}",
        missing.err()
    );
}

#[test]
fn devices_are_created_and_numbers_linux_cannot_hold_are_not() {
    let l1 = layer(vec![E::dir("dev"), E::file("dev/mem", b"lower")]);
    let l2 = layer(vec![
        E::char_dev("dev/null", 1, 3),
        E::block_dev("dev/big", 259, 70000),
        E::char_dev("dev/mem", 4097, 1),
        E::block_dev("dev/minor", 8, 1 << 20),
        E::fifo("dev/fifo"),
    ]);
    let got = apply(&[l1, l2]).expect("applies");
    assert_eq!(
        got.tree.get("dev/null").map(|n| (n.kind, n.rdev)),
        Some((Kind::Char, Some((1, 3))))
    );
    assert_eq!(
        got.tree.get("dev/big").map(|n| (n.kind, n.rdev)),
        Some((Kind::Block, Some((259, 70000))))
    );
    assert_eq!(got.tree.get("dev/fifo").map(|n| n.kind), Some(Kind::Fifo));
    assert!(
        got.tree.get("dev/mem").is_none(),
        "4097:1 would be 1:1 truncated; and the lower file is replaced"
    );
    assert!(got.tree.get("dev/minor").is_none());
    let what: Vec<_> =
        got.report.records.iter().map(|r| (r.kind, r.path.as_str(), r.layer)).collect();
    assert_eq!(
        what,
        [(SanitisedKind::Device, "/dev/mem", 1), (SanitisedKind::Device, "/dev/minor", 1)]
    );
}

#[test]
fn xattrs_trusted_dropped_and_symlink_user_xattrs_reported() {
    let l = layer(vec![
        E::file("f", b"").xattr("trusted.x", b"1").xattr("user.y", b"a\nb"),
        E::symlink("s", "f").xattr("user.z", b"1"),
    ]);
    let got = apply(&[l]).expect("applies");
    let f = got.tree.get("f").expect("f");
    assert_eq!(f.xattrs.iter().collect::<Vec<_>>(), [(&"user.y".to_string(), &b"a\nb".to_vec())]);
    let kinds: Vec<_> = got.report.records.iter().map(|r| (r.kind, r.path.as_str())).collect();
    assert_eq!(kinds, [(SanitisedKind::Xattr, "/f"), (SanitisedKind::Xattr, "/s")]);
    assert!(
        got.report.records[1].why.contains("only on regular files and directories"),
        "{:?}",
        got.report.records[1]
    );
}

#[test]
fn names_link_targets_and_values_with_newlines() {
    let l = layer(vec![
        E::file("a\nb", b"x").xattr("user.cap", &[0x0a, 0, 0, 2]),
        E::symlink("l", "target\nwith newline"),
        E::hardlink("h", "a\nb"),
    ]);
    let got = same_as_model(&[l]);
    assert_eq!(
        got.tree.get("a\nb").map(|n| n.xattrs["user.cap"].clone()),
        Some(vec![0x0a, 0, 0, 2])
    );
    assert_eq!(
        got.tree.get("l").and_then(|n| n.target.clone()),
        Some(b"target\nwith newline".to_vec())
    );
}

#[test]
fn global_headers_create_nothing_and_are_reported() {
    let mut b = LayerBuilder::new();
    b.global(&[("comment", b"harmless")]);
    b.push(E::file("a", b""));
    b.global(&[("uid", b"77"), ("path", b"x/y")]);
    b.push(E::file("b", b""));
    let tar = b.finish();
    let got = same_as_model(std::slice::from_ref(&tar));
    assert_eq!(names(&got.tree), ["a", "b"]);
    assert_eq!(got.tree.get("b").map(|n| n.uid), Some(0));
    assert_eq!(got.report.records.len(), 1, "{:?}", got.report.records);
    assert_eq!(got.report.records[0].kind, SanitisedKind::GlobalHeader);
    assert!(
        got.report.records[0].what.contains("\"path\", \"uid\""),
        "{:?}",
        got.report.records[0]
    );
}

#[test]
fn sparse_files_are_written_with_their_holes() {
    let segments = vec![(4096, b"data".to_vec()), (1 << 20, vec![7u8; 5000])];
    let l = layer(vec![E::sparse("var/sparse", (1 << 21) + 3, segments)]);
    let got = same_as_model(std::slice::from_ref(&l));
    let m = std::fs::metadata(got.dir.path().join("var/sparse")).expect("stat");
    assert_eq!(m.len(), (1 << 21) + 3);
    assert!(m.blocks() * 512 <= 64 * 1024, "holes stay holes: {} blocks", m.blocks());
}

#[test]
fn terabytes_of_holes_cost_nothing_and_what_ext4_cannot_hold_is_refused() {
    // A lastlog of a high uid: 5 TiB of holes, 292 bytes of data at the end.
    let size = 5u64 << 40;
    let l = layer(vec![E::sparse("var/log/lastlog", size, vec![(size - 292, vec![1u8; 292])])]);
    let start = std::time::Instant::now();
    let (dir, _) = apply_only(&[l]).expect("applies");
    assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
    let m = std::fs::metadata(dir.path().join("var/log/lastlog")).expect("stat");
    assert_eq!((m.len(), m.blocks() * 512 <= 64 * 1024), (size, true));

    let l = layer(vec![E::sparse("huge", 1 << 62, vec![(0, b"x".to_vec())])]);
    let err = apply_only(&[l]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("ext4 with 4 KiB blocks holds at most"), "{err}");
}

#[test]
fn times_ext4_cannot_store_are_clamped_and_reported() {
    use rootbox_tests::tree::Mtime;
    let l = layer(vec![
        E::file("future", b"").mtime(Mtime::new(99_999_999_999, 5)),
        E::file("past", b"").mtime(Mtime::new(-(1 << 40), 0)),
    ]);
    let got = apply(&[l]).expect("applies");
    assert_eq!(
        got.tree.get("future").and_then(|n| n.mtime),
        Some(Mtime::new(super::meta::TIME_MAX, 0))
    );
    assert_eq!(
        got.tree.get("past").and_then(|n| n.mtime),
        Some(Mtime::new(super::meta::TIME_MIN, 0))
    );
    assert_eq!(got.report.counts.get(&SanitisedKind::Time), Some(&2));
}

#[test]
fn refusals_name_the_entry() {
    let cases: Vec<(Vec<E>, &str)> = vec![
        (vec![E::raw(b"../x", b"")], "refusing a `..` component"),
        (vec![E::raw(b"a/.wh.", b"")], "refusing a whiteout with no name"),
        (vec![E::symlink("s", "")], "symlink target of 0 bytes"),
        (vec![E::file("f", b""), E::file("f/g", b"")], "parent is not a directory"),
        (vec![E::dir("d"), E::hardlink("h", "d")], "hardlink to directory"),
    ];
    for (entries, want) in cases {
        let err = apply(&[layer(entries)]).err().expect("refused");
        let text = err.causes().join(": ");
        assert!(text.contains(want), "{text:?} lacks {want:?}");
    }
}

#[test]
fn new_directories_under_a_deep_symlinked_path_cost_one_lookup_each() {
    // Each entry makes 300 directories below a chain of symlinks that expands to thousands of
    // components. The whole path was resolved again for every directory made, and for every
    // one found missing on the way up: twice the depth in resolutions, each as long as the
    // expanded path, so the square of the depth. With 1000 directories an entry and ten
    // links, a layer of 50 KB held the applier for 10 s (a few more links: minutes, and the
    // `apply` fuzz target's timeout). Counted, not timed: a few resolutions an entry.
    const LINKS: usize = 3;
    const DEPTH: usize = 300;
    let comp = vec!["a"; DEPTH].join("/");
    let mut entries = vec![E::dir(&comp)];
    let mut link = comp.clone();
    for k in 1..=LINKS {
        entries.push(E::symlink(&format!("s{k}"), &link));
        entries.push(E::dir(&format!("s{k}/{comp}")));
        link = format!("s{k}/{comp}");
    }
    entries.push(E::file(&format!("{link}/f"), b"deep"));
    let count = entries.len() as u64;
    let (dir, a) = apply_only(&[layer(entries)]).expect("applies");
    let resolutions = a.root.resolutions.get();
    assert!(resolutions <= 4 * count, "{resolutions} path resolutions for {count} entries");
    let deep = dir.path().join(format!("{}/f", [comp.as_str(); LINKS + 1].join("/")));
    assert_eq!(std::fs::read(&deep).ok().as_deref(), Some(&b"deep"[..]));
}

#[test]
fn new_directories_under_symlinked_ancestors_stay_inside() {
    let l1 = layer(vec![
        E::dir("etc"),
        E::symlink("evil", "/"),
        E::symlink("up", "../../.."),
        E::symlink("etcl", "/etc"),
        E::dir("etc/sub"),
        E::symlink("rel", "etc/sub"),
    ]);
    let l2 = layer(vec![
        E::file("evil/etc/new/deep/x", b"x"),
        E::file("up/n1/n2/y", b"y"),
        E::file("etcl/made/z", b"z"),
        E::file("rel/w", b"w"),
        E::dir("evil/up/etcl/twice"),
    ]);
    let got = same_as_model(&[l1.clone(), l2]);
    for p in ["etc/new/deep/x", "n1/n2/y", "etc/made/z", "etc/sub/w", "etc/twice"] {
        assert!(got.tree.get(p).is_some(), "{p} missing: {:?}", names(&got.tree));
    }
    let dangling = apply(&[layer(vec![E::symlink("d", "nowhere/x"), E::file("d/f", b"")])]);
    assert!(dangling.is_err(), "a dangling symlink's target is not made");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Applier::new(dir.path(), Limits::default(), Recorder::default()).expect("root");
    a.apply_layer(0, &l1[..]).expect("image");
    a.begin_injection();
    let through = a.apply_layer(1, &layer(vec![E::file("etcl/new/agent", b"")])[..]);
    assert!(
        matches!(&through, Err(ApplyError::Refused { why, .. }) if why.contains("through a symlink")),
        "{through:?}"
    );
    assert!(!dir.path().join("etc/new").exists(), "nothing made through the link");
}

//! What later entries do to earlier ones, and what special files become: a type flip
//! replaces the earlier entry (and its children), the last duplicate in a layer wins, and
//! device nodes are created in the image, never on the host.

use std::fs;
use std::path::Path;

use rootbox_tests::digest::sha256_hex;
use rootbox_tests::layer::Entry as E;
use rootbox_tests::require_root;
use rootbox_tests::scene::Scene;
use rootbox_tests::tree::{assert_same, Kind, Node};

use super::{accepted, assert_file, model, unique};
use crate::util::{layer, oci_of};

#[test]
fn type_flips_replace_earlier_entries() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let l1 = layer(vec![
        E::file("a", b"file a\n"),
        E::dir("b"),
        E::file("b/x", b"in b\n"),
        E::symlink("c", "a"),
        E::dir("d"),
        E::dir("d/deep"),
        E::file("d/deep/f", b"deep\n"),
    ]);
    let l2 = layer(vec![
        E::dir("a"),
        E::file("a/in", b"in a\n"),
        E::file("b", b"file b\n"),
        E::dir("c"),
        E::symlink("d", "b"),
    ]);
    let l3 = layer(vec![
        E::symlink("a", "b"),
        E::dir("b").mode(0o700),
        E::file("c", b"file c\n"),
        // Within one layer: file, then dir, then symlink at the same name.
        E::file("e", b"e\n"),
        E::dir("e"),
        E::symlink("e", "a"),
        // And dir with content, then file.
        E::dir("f"),
        E::file("f/g", b"g\n"),
        E::file("f", b"f\n"),
    ]);
    let tars = vec![l1, l2, l3];
    let got = accepted(&env, &scene, &oci_of(&scene, tars.clone()));
    let kinds: Vec<(&str, Option<Kind>)> =
        ["a", "b", "c", "d", "e", "f"].iter().map(|p| (*p, got.get(p).map(|n| n.kind))).collect();
    assert_eq!(
        kinds,
        vec![
            ("a", Some(Kind::Symlink)),
            ("b", Some(Kind::Dir)),
            ("c", Some(Kind::File)),
            ("d", Some(Kind::Symlink)),
            ("e", Some(Kind::Symlink)),
            ("f", Some(Kind::File)),
        ]
    );
    for gone in ["a/in", "b/x", "d/deep", "d/deep/f", "f/g"] {
        assert!(got.get(gone).is_none(), "{gone} should be gone");
    }
    assert_same("type flips", &model(&tars), &got);
}

#[test]
fn duplicates_in_a_layer_last_wins() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let tars = vec![layer(vec![
        E::file("f", b"1\n"),
        E::file("f", b"2\n").mode(0o600).owner(1, 1),
        E::dir("d").mode(0o700),
        E::file("d/kept", b"kept\n"),
        E::dir("d").mode(0o750).owner(2, 2),
        E::symlink("s", "x"),
        E::symlink("s", "y"),
        E::char_dev("n", 1, 3),
        E::char_dev("n", 1, 5),
        E::file("g2", b"x\n"),
        E::dir("g2"),
    ])];
    let got = accepted(&env, &scene, &oci_of(&scene, tars.clone()));
    assert_eq!(
        got.get("f").map(|n| (n.mode, n.uid, n.sha256.clone())),
        Some((0o600, 1, Some(sha256_hex(b"2\n"))))
    );
    assert_eq!(got.get("d").map(|n| (n.kind, n.mode, n.uid)), Some((Kind::Dir, 0o750, 2)));
    assert_file(&got, "d/kept", b"kept\n");
    assert_eq!(got.get("s").and_then(|n| n.target.clone()), Some(b"y".to_vec()));
    assert_eq!(got.get("n").and_then(|n| n.rdev), Some((1, 5)));
    assert_eq!(got.get("g2").map(|n| n.kind), Some(Kind::Dir));
    assert_same("duplicates", &model(&tars), &got);
}

#[test]
fn devices_are_created_inside_only() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let via_link = unique("dev-link");
    let via_abs = unique("dev-abs");
    let tars = vec![layer(vec![
        E::dir("dev"),
        E::char_dev("dev/null", 1, 3),
        E::char_dev("dev/zero", 1, 5).mode(0o666),
        E::block_dev("dev/sda", 8, 0),
        E::block_dev("dev/nvme", 259, 65536),
        E::fifo("dev/fifo").mode(0o620),
        E::symlink("hostdev", "/dev"),
        E::char_dev(&format!("hostdev/{via_link}"), 1, 3),
        E::block_dev(&format!("/dev/{via_abs}"), 7, 0),
    ])];
    let got = accepted(&env, &scene, &oci_of(&scene, tars.clone()));
    let want: Vec<(&str, Node)> = vec![
        ("dev/null", Node::char_dev(1, 3, 0o666)),
        ("dev/zero", Node::char_dev(1, 5, 0o666)),
        ("dev/sda", Node::block_dev(8, 0, 0o660)),
        ("dev/nvme", Node::block_dev(259, 65536, 0o660)),
        ("dev/fifo", Node::fifo(0o620)),
    ];
    for (p, n) in want {
        let g = got.get(p).unwrap_or_else(|| panic!("{p} missing"));
        assert_eq!((g.kind, g.rdev, g.mode), (n.kind, n.rdev, n.mode), "{p}");
    }
    assert_eq!(got.get(&format!("dev/{via_link}")).and_then(|n| n.rdev), Some((1, 3)));
    assert_eq!(got.get(&format!("dev/{via_abs}")).and_then(|n| n.rdev), Some((7, 0)));
    for host in [via_link, via_abs] {
        let p = Path::new("/dev").join(&host);
        assert!(fs::symlink_metadata(&p).is_err(), "{} was created on the host", p.display());
    }
    assert_same("devices", &model(&tars), &got);
}

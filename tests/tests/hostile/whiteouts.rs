//! Whiteouts: malformed `.wh.` names are refused; whiteouts and opaque markers reached
//! through symlinks remove only what is inside the image, never a host file.

use std::fs;

use rootbox_tests::layer::Entry as E;
use rootbox_tests::require_root;
use rootbox_tests::scene::Scene;
use rootbox_tests::tree::{assert_same, Kind};

use super::{accepted, assert_file, image_dirs_for, model, refused, rel};
use crate::util::{layer, oci_of};

#[test]
fn bad_whiteout_names_are_refused() {
    let env = require_root!();
    for name in [&b".wh."[..], b".wh..", b".wh...", b"etc/.wh..", b"etc/.wh...", b"etc/.wh."] {
        eprintln!("variant: whiteout {:?}", String::from_utf8_lossy(name));
        let scene = Scene::new(&env);
        let l1 = layer(vec![E::dir("etc"), E::file("etc/passwd", b"x\n")]);
        let l2 = layer(vec![E::dir("etc"), E::raw(name, b"")]);
        refused(&env, &scene, &oci_of(&scene, vec![l1, l2]), &[], &[4], &[".wh."]);
    }
}

#[test]
fn whiteouts_through_symlinks_stay_inside() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let host_hostname = fs::read("/etc/hostname").ok();
    let canary_dir = scene.dir.path().to_string_lossy().into_owned();
    let mut l1 = vec![
        E::dir("etc"),
        E::file("etc/x", b"x\n"),
        E::file("etc/y", b"y\n"),
        E::file("etc/z", b"z\n"),
        E::symlink("evil", "/"),
        E::symlink("hostetc", "/etc"),
        E::symlink("c", &canary_dir),
        E::dir("d"),
        E::file("d/a", b"a\n"),
        E::dir("d/sub"),
    ];
    l1.extend(image_dirs_for(scene.dir.path()));
    l1.push(E::file(&format!("{}/canary", rel(scene.dir.path())), b"image canary\n"));
    let l2 = vec![
        E::raw(b"evil/etc/.wh.x", b""),
        E::raw(b"hostetc/.wh.y", b""),
        E::raw(b"hostetc/.wh.hostname", b""),
        E::raw(b"evil/d/.wh..wh..opq", b""),
        E::raw(b"c/.wh.canary", b""),
        E::raw(format!("{canary_dir}/.wh.nothing").as_bytes(), b""),
    ];
    let tars = vec![layer(l1), layer(l2)];
    let got = accepted(&env, &scene, &oci_of(&scene, tars.clone()));
    for gone in ["etc/x", "etc/y", "d/a", "d/sub"] {
        assert!(got.get(gone).is_none(), "{gone} should have been whited out");
    }
    assert!(got.get(&format!("{}/canary", rel(scene.dir.path()))).is_none(), "image canary kept");
    assert_file(&got, "etc/z", b"z\n");
    assert_eq!(got.get("d").map(|n| n.kind), Some(Kind::Dir));
    assert_eq!(fs::read("/etc/hostname").ok(), host_hostname, "host /etc/hostname changed");
    assert_same("whiteouts through symlinks", &model(&tars), &got);
}

//! Links as ways out of the image: writes through a symlinked ancestor, within a layer and
//! across layers, land inside it; a hardlink out of the image or to a missing target is
//! refused, and an absolute hardlink target resolves inside it.

use std::path::Path;

use rootbox_tests::layer::Entry as E;
use rootbox_tests::require_root;
use rootbox_tests::run::error_lines;
use rootbox_tests::scene::Scene;
use rootbox_tests::tree::{assert_same, Kind, Tree};

use super::{accepted, assert_file, image_dirs_for, model, refused, rel, unique};
use crate::util::{layer, oci_of};

fn symlink_ancestor_entries(scene: &Scene, tag: &str) -> (Vec<E>, Vec<E>, String) {
    let host_etc_name = unique(tag);
    let mut setup = vec![
        E::dir("etc"),
        E::symlink("evil", "/"),
        E::symlink("up", "../../.."),
        E::symlink("etcl", "/etc"),
        E::symlink("c", &scene.dir.path().to_string_lossy()),
    ];
    setup.extend(image_dirs_for(scene.dir.path()));
    let writes = vec![
        E::file("evil/etc/x", b"x\n"),
        E::file("up/etc/y", b"y\n"),
        E::file(&format!("etcl/{host_etc_name}"), b"z\n"),
        E::file("c/canary", b"pwned\n"),
        E::dir("evil/etc/sub"),
        E::file("up/etc/sub/deep", b"deep\n"),
    ];
    (setup, writes, host_etc_name)
}

fn check_symlink_ancestor(scene: &Scene, got: &Tree, host_etc_name: &str) {
    assert_file(got, "etc/x", b"x\n");
    assert_file(got, "etc/y", b"y\n");
    assert_file(got, &format!("etc/{host_etc_name}"), b"z\n");
    assert_file(got, &rel(&scene.canary()), b"pwned\n");
    assert_file(got, "etc/sub/deep", b"deep\n");
    for l in ["evil", "up", "etcl", "c"] {
        assert_eq!(got.get(l).map(|n| n.kind), Some(Kind::Symlink), "{l} must stay a symlink");
    }
    let host = Path::new("/etc").join(host_etc_name);
    assert!(!host.exists(), "{} was written on the host", host.display());
    assert!(
        !Path::new("/etc/x").exists() && !Path::new("/etc/y").exists(),
        "host /etc/x or /etc/y exists"
    );
}

#[test]
fn symlink_ancestor_within_a_layer_is_confined() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let (mut entries, writes, name) = symlink_ancestor_entries(&scene, "within");
    entries.extend(writes);
    let tars = vec![layer(entries)];
    let got = accepted(&env, &scene, &oci_of(&scene, tars.clone()));
    check_symlink_ancestor(&scene, &got, &name);
    assert_same("symlink ancestors within a layer", &model(&tars), &got);
}

#[test]
fn symlink_ancestor_across_layers_is_confined() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let (setup, writes, name) = symlink_ancestor_entries(&scene, "across");
    let tars = vec![layer(setup), layer(writes)];
    let got = accepted(&env, &scene, &oci_of(&scene, tars.clone()));
    check_symlink_ancestor(&scene, &got, &name);
    assert_same("symlink ancestors across layers", &model(&tars), &got);
}

#[test]
fn hardlink_out_of_the_image_is_refused() {
    let env = require_root!();
    for target in ["../../etc/passwd", "a/../../../etc/passwd", "../../canary", "etc/../../canary"]
    {
        let scene = Scene::new(&env);
        let tars = vec![layer(vec![
            E::dir("etc"),
            E::file("etc/passwd", b"image\n"),
            E::hardlink("link", target),
        ])];
        refused(&env, &scene, &oci_of(&scene, tars), &[], &[4], &["refusing"]);
    }
}

#[test]
fn hardlink_to_absolute_path_resolves_in_the_image() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let l1 = layer(vec![
        E::dir("etc"),
        E::file("etc/passwd", b"image passwd\n").mode(0o600),
        E::symlink("evil", "/"),
    ]);
    let l2 = layer(vec![
        E::hardlink("hl", "/etc/passwd"),
        E::hardlink("hl2", "evil/etc/passwd"),
        E::hardlink("evil/etc/hl3", "//etc/passwd"),
    ]);
    let tars = vec![l1, l2];
    let got = accepted(&env, &scene, &oci_of(&scene, tars.clone()));
    for p in ["etc/passwd", "hl", "hl2", "etc/hl3"] {
        assert_file(&got, p, b"image passwd\n");
    }
    let mut group = Tree::default();
    group.link_group(&["etc/passwd", "etc/hl3", "hl", "hl2"]);
    assert_eq!(got.links, group.links, "hardlink group");
    assert_same("absolute hardlink targets", &model(&tars), &got);
}

#[test]
fn hardlink_to_missing_target_is_refused() {
    let env = require_root!();
    let scene0 = Scene::new(&env);
    let canary = scene0.canary().to_string_lossy().into_owned();
    drop(scene0);
    for target in ["nope", "etc/passwd", "/etc/passwd", canary.as_str(), "evil/etc/shadow"] {
        eprintln!("variant: hardlink target {target:?}");
        let scene = Scene::new(&env);
        let tars = vec![layer(vec![
            E::dir("etc"),
            E::symlink("evil", "/"),
            E::hardlink("hl-missing", target),
        ])];
        let o = refused(&env, &scene, &oci_of(&scene, tars), &[], &[4], &[]);
        let line = error_lines(&o)[0];
        let base = target.rsplit('/').next().unwrap_or(target);
        assert!(
            line.contains("hl-missing") || line.contains(base),
            "error names neither the link nor its target:\n{}",
            o.describe()
        );
    }
}

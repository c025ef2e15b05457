//! Entry names that point outside the image: `..` traversal in every spelling (plain, PAX,
//! through directories, devices, links and whiteouts) and from every source kind is refused;
//! absolute names are re-rooted inside the image.

use std::fs;

use rootbox_tests::layer::Entry as E;
use rootbox_tests::oci::{Compression, DockerLayout, Image};
use rootbox_tests::require_root;
use rootbox_tests::run::expect_failure;
use rootbox_tests::scene::Scene;
use rootbox_tests::tree::assert_same;

use super::{accepted, assert_file, image_dirs_for, model, refused, rel};
use crate::util::{layer, oci_of};

#[test]
fn traversal_is_refused() {
    let env = require_root!();
    let variants: Vec<(E, &str)> = vec![
        (E::raw(b"../../canary", b"pwned\n"), "canary"),
        (E::raw(b"../canary", b"pwned\n"), "canary"),
        (E::raw(b"a/../../canary", b"pwned\n"), "canary"),
        (E::raw(b"./../canary", b"pwned\n"), "canary"),
        (E::raw(b"/../canary", b"pwned\n"), "canary"),
        (E::raw(b"../../canary", b"pwned\n").pax_path(), "canary"),
        (E::dir("../../evil-dir"), "evil-dir"),
        (E::symlink("../../evil-link", "/"), "evil-link"),
        (E::char_dev("../../evil-dev", 1, 3), "evil-dev"),
        (E::raw(b"../.wh.canary", b""), "canary"),
        (E::raw(b"etc/../../.wh..wh..opq", b""), ".wh..wh..opq"),
    ];
    for (entry, name) in variants {
        eprintln!("variant: entry {:?}", String::from_utf8_lossy(&entry.name));
        let scene = Scene::new(&env);
        let source = oci_of(&scene, vec![layer(vec![E::dir("etc"), entry])]);
        refused(&env, &scene, &source, &[], &[4], &["refusing", name]);
    }
}

#[test]
fn traversal_is_refused_from_every_source_kind() {
    let env = require_root!();
    let tar = layer(vec![E::dir("etc"), E::raw(b"../../canary", b"pwned\n")]);
    let scene = Scene::new(&env);
    let archive = scene.input.join("docker.tar");
    Image::from_tars(std::slice::from_ref(&tar), Compression::None)
        .write_docker_archive(&archive, DockerLayout::Legacy)
        .expect("write");
    refused(
        &env,
        &scene,
        &format!("docker-archive:{}", archive.display()),
        &[],
        &[4],
        &["refusing", "canary"],
    );

    let scene = Scene::new(&env);
    let flat = scene.input.join("flat.tar");
    fs::write(&flat, &tar).expect("write");
    refused(
        &env,
        &scene,
        &format!("rootfs-tar:{}", flat.display()),
        &[],
        &[4],
        &["refusing", "canary"],
    );

    let scene = Scene::new(&env);
    let o = env.pull_input("rootfs-tar:-", &scene.output(), &[], Some(tar));
    expect_failure(&o, &[4], &["refusing", "canary"]);
    scene.assert_refused_cleanly();
}

#[test]
fn absolute_names_are_rerooted() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let canary = scene.canary();
    let mut entries =
        vec![E::dir("/etc"), E::raw(b"/etc/abs-file", b"abs\n"), E::raw(b"//abs-top", b"top\n")];
    entries.extend(image_dirs_for(scene.dir.path()).into_iter().map(|e| {
        let name = [b"/".as_slice(), &e.name].concat();
        e.raw_name(&name)
    }));
    entries.push(E::raw(canary.to_string_lossy().as_bytes(), b"pwned\n"));
    let tars = vec![layer(entries)];
    let source = oci_of(&scene, tars.clone());
    let got = accepted(&env, &scene, &source);
    assert_file(&got, "etc/abs-file", b"abs\n");
    assert_file(&got, "abs-top", b"top\n");
    assert_file(&got, &rel(&canary), b"pwned\n");
    assert_same("absolute names", &model(&tars), &got);
}

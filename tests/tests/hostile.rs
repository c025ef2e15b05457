//! Hostile and broken images, one test per class. Every test checks that a canary beside the
//! output (and its directory) and the worker image are untouched; refused runs must leave no
//! output and no temp file; accepted runs are checked for confinement with a snapshot.
//!
//! The classes are grouped by what the image goes for, one submodule each (names that leave
//! the image, links, whiteouts, entries replacing entries, limits, broken blobs, the run
//! itself); this file holds what they share: the refused and accepted runs, the model's
//! expectation, and names of host paths as the image spells them.
//!
//! Needs root, loop devices, the rootbox binary and its worker image (see `guard`).

use std::path::Path;

use rootbox_tests::digest::sha256_hex;
use rootbox_tests::layer::Entry as E;
use rootbox_tests::model::Model;
use rootbox_tests::run::{
    error_lines, expect_dir_holds, expect_failure, expect_fsck_clean, expect_success, Outcome,
};
use rootbox_tests::scene::Scene;
use rootbox_tests::tree::{Kind, Tree};
use rootbox_tests::{snapshot, Env};

mod blobs;
mod bounds;
mod entries;
mod links;
mod paths;
mod sandbox;
mod whiteouts;

/// Runs a pull that must be refused with one of `codes`, and checks nothing was left or touched.
fn refused(
    env: &Env,
    scene: &Scene,
    source: &str,
    extra: &[&str],
    codes: &[i32],
    mentions: &[&str],
) -> Outcome {
    let o = env.pull(source, &scene.output(), extra);
    expect_failure(&o, codes, mentions);
    eprintln!("refused (exit {}): {}", o.code, error_lines(&o).join(" | "));
    scene.assert_refused_cleanly();
    o
}

/// Runs a pull that must succeed, checks the surroundings and the image, returns its snapshot.
fn accepted(env: &Env, scene: &Scene, source: &str) -> Tree {
    let o = env.pull(source, &scene.output(), &[]);
    expect_success(&o);
    scene.assert_untouched();
    expect_dir_holds(&scene.out_dir, &["out.ext4"]);
    expect_fsck_clean(&scene.output());
    snapshot::of_image(&scene.output()).expect("snapshot")
}

/// The model's expectation for these layers, directory mtimes not checked (layers here change
/// directories without describing them again).
fn model(tars: &[Vec<u8>]) -> Tree {
    let mut t = Model::from_layers(tars).expect("model").tree();
    t.forget_dir_mtimes();
    t
}

fn file_content(tree: &Tree, path: &str) -> Option<(Kind, Option<String>)> {
    tree.get(path).map(|n| (n.kind, n.sha256.clone()))
}

fn assert_file(tree: &Tree, path: &str, content: &[u8]) {
    assert_eq!(
        file_content(tree, path),
        Some((Kind::File, Some(sha256_hex(content)))),
        "{path} should be a file holding {:?}",
        String::from_utf8_lossy(content)
    );
}

/// Directory entries for the host path `p` and its ancestors, as names inside the image.
fn image_dirs_for(p: &Path) -> Vec<E> {
    let mut out = Vec::new();
    let mut acc = String::new();
    for c in p.components().skip(1) {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(&c.as_os_str().to_string_lossy());
        out.push(E::dir(&acc));
    }
    out
}

fn rel(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

fn unique(tag: &str) -> String {
    format!("rootbox-hostile-{tag}-{}", std::process::id())
}

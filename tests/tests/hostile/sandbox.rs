//! Failures of the run rather than of the content: no worker image and not root are sandbox
//! errors (exit 5), and SIGTERM mid-pull; each leaves no output and no temp file behind.

use std::fs;
use std::path::Path;

use rootbox_tests::layer::Entry as E;
use rootbox_tests::oci::{Compression, LayerSpec};
use rootbox_tests::require_root;
use rootbox_tests::run::{expect_failure, run_with};
use rootbox_tests::scene::Scene;

use crate::util::{layer, oci_of, write_oci};

#[test]
fn worker_image_missing_is_a_sandbox_error() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let source = oci_of(&scene, vec![layer(vec![E::dir("etc")])]);
    let mut broken = env.clone();
    broken.worker_image = scene.input.join("no-such-worker-image");
    let o = broken.pull(&source, &scene.output(), &[]);
    expect_failure(&o, &[5], &[]);
    scene.assert_refused_cleanly();
}

#[test]
fn not_root_is_a_sandbox_error() {
    use std::os::unix::fs::PermissionsExt;
    let env = require_root!();
    let scene = Scene::new(&env);
    let source = oci_of(&scene, vec![layer(vec![E::dir("etc")])]);
    // Let uid 65534 reach the source and write the output directory (modes only: the
    // directory's mtime, which the scene checks, does not change).
    for d in [scene.dir.path(), &scene.input, &scene.out_dir] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let status =
        std::process::Command::new("chmod").arg("-R").arg("a+rX").arg(&scene.input).status();
    assert!(status.is_ok_and(|s| s.success()), "chmod -R");
    let mut args: Vec<std::ffi::OsString> =
        ["--reuid=65534", "--regid=65534", "--clear-groups"].iter().map(Into::into).collect();
    args.push(env.bin.clone().into());
    for a in ["pull", &source, "-o"] {
        args.push(a.into());
    }
    args.push(scene.output().into());
    args.push("--worker-image".into());
    args.push(env.worker_image.clone().into());
    for a in ["--no-default-assets", "--isolation", "container"] {
        args.push(a.into());
    }
    let o = run_with(Path::new("setpriv"), &args, None);
    expect_failure(&o, &[5], &[]);
    scene.assert_refused_cleanly();
}

#[test]
fn interrupted_pull_leaves_nothing_behind() {
    use std::time::Duration;
    let env = require_root!();
    let scene = Scene::new(&env);
    // Big enough to take a while: 32 files of 4 MiB of noise, uncompressed.
    let noise: Vec<u8> =
        (0..4u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let mut entries = vec![E::dir("big")];
    entries.extend((0..32).map(|i| E::file(&format!("big/f{i}"), &noise)));
    let (source, _) = write_oci(&scene, vec![LayerSpec::new(layer(entries), Compression::None)]);
    let args = rootbox_tests::lifecycle::pull_args(&env, &source, &scene.output(), &["--progress"]);
    let (mut child, rx) = rootbox_tests::lifecycle::spawn_rootbox(&env, &args, &[]);
    // The output is an unnamed file until it is done: wait for the worker to apply instead.
    rootbox_tests::lifecycle::wait_for_line(&rx, "apply layer 1", Duration::from_secs(60));
    rootbox_tests::lifecycle::signal(child.id(), "TERM");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "rootbox succeeded despite SIGTERM");
    scene.assert_refused_cleanly();
}

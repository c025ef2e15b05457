//! Helpers more than one module of the end-to-end tests uses, kept once here: temp and output
//! directories, a layer from entries, an OCI layout of gzip layers, the hand-made image as one
//! flat tar, and the fsck-snapshot-compare check of a built image.

use std::fs;
use std::path::{Path, PathBuf};

use rootbox_tests::fixture::handmade;
use rootbox_tests::layer::{Entry, LayerBuilder};
use rootbox_tests::model::Model;
use rootbox_tests::oci::{Compression, Image, LayerSpec, Written};
use rootbox_tests::run::expect_fsck_clean;
use rootbox_tests::scene::Scene;
use rootbox_tests::snapshot;
use rootbox_tests::tree::{assert_same, Tree};

/// A temp dir whose name starts with `prefix` (each module names its own), removed on drop.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir")
}

/// A fresh empty directory `name` under `tmp`.
pub fn fresh(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    fs::create_dir(&d).expect("mkdir");
    d
}

/// One layer tar holding `entries`, in order.
pub fn layer(entries: Vec<Entry>) -> Vec<u8> {
    LayerBuilder::new().extend(entries).finish()
}

/// Writes `layers` as an untagged OCI layout in the scene's input; returns its source and
/// what was written.
pub fn write_oci(scene: &Scene, layers: Vec<LayerSpec>) -> (String, Written) {
    let dir = scene.input.join("oci");
    let w = Image::new(layers).write_oci(&dir, None).expect("write OCI layout");
    (format!("oci:{}", dir.display()), w)
}

/// [`write_oci`] of `tars`, each a gzip layer; returns the source.
pub fn oci_of(scene: &Scene, tars: Vec<Vec<u8>>) -> String {
    write_oci(scene, tars.into_iter().map(|t| LayerSpec::new(t, Compression::Gzip)).collect()).0
}

/// The hand-made image's layers applied into one flat tar.
pub fn handmade_flat_tar() -> Vec<u8> {
    Model::from_layers(&handmade::layers()).expect("model").to_tar()
}

/// fsck, mount, snapshot, compare.
pub fn check_image(what: &str, out: &Path, expected: &Tree) {
    expect_fsck_clean(out);
    let actual = snapshot::of_image(out).expect("snapshot of the built image");
    assert_same(what, expected, &actual);
}

/// A pull of 512 MiB of noise (a flat tar, two files) under `tmp`, started with
/// `--isolation isolation` and a private TMPDIR, and seen applying its layer: what the
/// kill-mid-pull tests interrupt.
pub struct NoisePull {
    pub child: std::process::Child,
    pub rx: std::sync::mpsc::Receiver<String>,
    pub out_dir: PathBuf,
    pub private_tmp: PathBuf,
    /// What rootbox said up to the apply.
    pub seen: Vec<String>,
}

impl NoisePull {
    pub fn start(env: &rootbox_tests::Env, tmp: &Path, isolation: &str) -> Self {
        use rootbox_tests::lifecycle::{noise_tar, pull_args, spawn_rootbox, wait_for_line};
        let input = fresh(tmp, "in");
        let out_dir = fresh(tmp, "out");
        let private_tmp = fresh(tmp, "tmp");
        let tar = input.join("noise.tar");
        noise_tar(&tar, 2, 256 << 20);
        let source = format!("rootfs-tar:{}", tar.display());
        let extra = ["--isolation", isolation, "--progress"];
        let args = pull_args(env, &source, &out_dir.join("out.ext4"), &extra);
        let (child, rx) = spawn_rootbox(env, &args, &[("TMPDIR", &private_tmp)]);
        let seen = wait_for_line(&rx, "apply layer 1", std::time::Duration::from_secs(120));
        Self { child, rx, out_dir, private_tmp, seen }
    }
}

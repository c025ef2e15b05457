//! End-to-end pulls of well-formed images, checked field by field against expectations:
//! the hand-made image (hand-written expectation) through every source kind, and a real
//! Debian minbase tree re-cut into three layers (expectation: the tar itself, via the model).
//!
//! Needs root, loop devices, the rootbox binary and its worker image (see `guard`).

use std::fs;
use std::path::{Path, PathBuf};

use rootbox_tests::digest::is_digest;
use rootbox_tests::fixture::{debian, handmade};
use rootbox_tests::layer::{Entry, LayerBuilder};
use rootbox_tests::model::Model;
use rootbox_tests::oci::{self, Compression, DockerLayout, Image, LayerSpec, Written};
use rootbox_tests::run::{
    doctor_json, expect_dir_holds, expect_failure, expect_success, file_sha256, json_strings,
    json_summary, sandbox_line, sandbox_lines, text_summary, Outcome,
};
use rootbox_tests::tree::{assert_same, Tree};
use rootbox_tests::{require_root, Env};

use crate::util::{self, check_image, fresh, handmade_flat_tar};

fn tempdir() -> tempfile::TempDir {
    util::tempdir("rootbox-e2e-")
}

/// What the `--json` object must say beyond the universal fields.
struct JsonWant<'a> {
    layers: Option<&'a [String]>,
    diff_ids: Option<&'a [String]>,
    /// (kind, path) records the sanitisation report must hold, and nothing else.
    sanitised: &'a [(&'a str, &'a str)],
}

/// Checks the `--json` summary against the real output file; returns the warnings.
fn check_json(o: &Outcome, out: &Path, want: JsonWant) -> Vec<String> {
    let v = json_summary(o);
    let records = v["sanitised"].as_array().cloned().unwrap_or_default();
    let mut got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (r["kind"].as_str().unwrap_or("?").into(), r["path"].as_str().unwrap_or("?").into())
        })
        .collect();
    got.sort();
    let mut wanted: Vec<(String, String)> =
        want.sanitised.iter().map(|(k, p)| (k.to_string(), p.to_string())).collect();
    wanted.sort();
    assert_eq!(got, wanted, "sanitisation report:\n{}", o.describe());
    assert_eq!(v["sanitised_total"].as_u64(), Some(wanted.len() as u64), "{}", o.describe());
    let v = json_summary(o);
    let ctx = o.describe();
    let path = PathBuf::from(v["path"].as_str().unwrap_or_else(|| panic!("no path:\n{ctx}")));
    assert_eq!(
        fs::canonicalize(&path).expect("JSON path exists"),
        fs::canonicalize(out).expect("output exists"),
        "JSON path is not the output:\n{ctx}"
    );
    let sha = v["sha256"].as_str().unwrap_or_else(|| panic!("no sha256:\n{ctx}"));
    assert_eq!(
        sha.trim_start_matches("sha256:"),
        file_sha256(out),
        "JSON sha256 is not the file's:\n{ctx}"
    );
    let len = fs::metadata(out).expect("output").len();
    assert_eq!(v["size_bytes"].as_u64(), Some(len), "size_bytes is not the file size:\n{ctx}");
    let used = v["used_bytes"].as_u64().unwrap_or_else(|| panic!("no used_bytes:\n{ctx}"));
    assert!(used > 0 && used <= len, "used_bytes {used} not in 1..={len}:\n{ctx}");
    assert!(v["inodes"].as_u64().is_some_and(|n| n > 0), "inodes missing or 0:\n{ctx}");
    let source = v["source_digest"].as_str().unwrap_or_else(|| panic!("no source_digest:\n{ctx}"));
    assert!(is_digest(source), "source_digest {source:?} is not a sha256 digest:\n{ctx}");
    let layers = json_strings(&v, "layers");
    let diff_ids = json_strings(&v, "diff_ids");
    assert!(layers.iter().all(|d| is_digest(d)), "layers are not all digests:\n{ctx}");
    assert!(diff_ids.iter().all(|d| is_digest(d)), "diff_ids are not all digests:\n{ctx}");
    if let Some(l) = want.layers {
        assert_eq!(layers, l, "layers are not the manifest's:\n{ctx}");
    }
    if let Some(d) = want.diff_ids {
        assert_eq!(diff_ids, d, "diff_ids are not the config's:\n{ctx}");
    }
    assert_eq!(v["isolation"], "container", "isolation:\n{ctx}");
    json_strings(&v, "warnings")
}

/// Checks the plain summary lines against the real output file.
fn check_text(o: &Outcome, out: &Path) {
    let (path, sha, size) = text_summary(o);
    assert_eq!(
        fs::canonicalize(path).expect("printed path exists"),
        fs::canonicalize(out).expect("output exists"),
        "printed path is not the output:\n{}",
        o.describe()
    );
    assert_eq!(sha, file_sha256(out), "printed sha256 is not the file's:\n{}", o.describe());
    assert_eq!(size, fs::metadata(out).expect("output").len(), "printed size:\n{}", o.describe());
}

fn pull_ok(
    env: &Env,
    source: &str,
    out_dir: &Path,
    extra: &[&str],
    stdin: Option<Vec<u8>>,
) -> Outcome {
    let out = out_dir.join("out.ext4");
    let o = env.pull_input(source, &out, extra, stdin);
    expect_success(&o);
    expect_dir_holds(out_dir, &["out.ext4"]);
    o
}

#[test]
fn handmade_oci_mixed_compression_json() {
    let env = require_root!();
    let tmp = tempdir();
    let [l1, l2, l3]: [Vec<u8>; 3] = handmade::layers().try_into().expect("three layers");
    let image = Image::new(vec![
        LayerSpec::new(l1, Compression::Gzip),
        LayerSpec::new(l2, Compression::Zstd),
        LayerSpec::new(l3, Compression::None),
    ]);
    let layout = tmp.path().join("oci");
    let w = image.write_oci(&layout, Some("hand")).expect("write OCI layout");
    let out_dir = fresh(tmp.path(), "out");
    let source = format!("oci:{}:hand", layout.display());
    let o = pull_ok(&env, &source, &out_dir, &["--json"], None);
    let out = out_dir.join("out.ext4");
    check_json(
        &o,
        &out,
        JsonWant {
            layers: Some(&w.layer_digests),
            diff_ids: Some(&w.diff_ids),
            sanitised: handmade::SANITISED,
        },
    );
    check_image("hand-made via oci (gzip/zstd/plain)", &out, &handmade::expected());
}

#[test]
fn handmade_oci_untagged_docker_media_type_text() {
    let env = require_root!();
    let tmp = tempdir();
    let [l1, l2, l3]: [Vec<u8>; 3] = handmade::layers().try_into().expect("three layers");
    let image = Image::new(vec![
        LayerSpec::new(l1, Compression::Gzip).media_type(oci::MT_DOCKER_GZIP),
        LayerSpec::new(l2, Compression::Gzip),
        LayerSpec::new(l3, Compression::Zstd),
    ]);
    let layout = tmp.path().join("oci");
    image.write_oci(&layout, None).expect("write OCI layout");
    let out_dir = fresh(tmp.path(), "out");
    let o = pull_ok(&env, &format!("oci:{}", layout.display()), &out_dir, &[], None);
    let out = out_dir.join("out.ext4");
    check_text(&o, &out);
    check_image(
        "hand-made via oci (docker gzip media type, untagged)",
        &out,
        &handmade::expected(),
    );
}

/// Writes `tars` as a docker archive in `tmp` and pulls it with `--json`.
fn pull_docker_archive(
    env: &Env,
    tmp: &Path,
    tars: &[Vec<u8>],
    layout: DockerLayout,
) -> (Outcome, PathBuf, Written) {
    let image = Image::from_tars(tars, Compression::None);
    let archive = tmp.join("image.tar");
    let w = image.write_docker_archive(&archive, layout).expect("write docker archive");
    let out_dir = fresh(tmp, "out");
    let source = format!("docker-archive:{}", archive.display());
    let o = pull_ok(env, &source, &out_dir, &["--json"], None);
    (o, out_dir.join("out.ext4"), w)
}

fn handmade_docker(layout: DockerLayout) {
    let env = require_root!();
    let tmp = tempdir();
    let (o, out, w) = pull_docker_archive(&env, tmp.path(), &handmade::layers(), layout);
    let v = json_summary(&o);
    assert_eq!(json_strings(&v, "layers").len(), 3, "docker-archive layers:\n{}", o.describe());
    check_json(
        &o,
        &out,
        JsonWant { layers: None, diff_ids: Some(&w.diff_ids), sanitised: handmade::SANITISED },
    );
    check_image(&format!("hand-made via docker-archive ({layout:?})"), &out, &handmade::expected());
}

#[test]
fn handmade_docker_archive_legacy_layout() {
    handmade_docker(DockerLayout::Legacy);
}

#[test]
fn handmade_docker_archive_blobs_layout() {
    handmade_docker(DockerLayout::Blobs);
}

#[test]
fn handmade_rootfs_tar_file() {
    let env = require_root!();
    let tmp = tempdir();
    let flat = tmp.path().join("rootfs.tar");
    fs::write(&flat, handmade_flat_tar()).expect("write flat tar");
    let out_dir = fresh(tmp.path(), "out");
    let o = pull_ok(&env, &format!("rootfs-tar:{}", flat.display()), &out_dir, &["--json"], None);
    let out = out_dir.join("out.ext4");
    check_json(&o, &out, JsonWant { layers: None, diff_ids: None, sanitised: &[] });
    check_image("hand-made via rootfs-tar file", &out, &handmade::expected());
}

#[test]
fn handmade_rootfs_tar_stdin() {
    let env = require_root!();
    let tmp = tempdir();
    let out_dir = fresh(tmp.path(), "out");
    let o = pull_ok(&env, "rootfs-tar:-", &out_dir, &[], Some(handmade_flat_tar()));
    let out = out_dir.join("out.ext4");
    check_text(&o, &out);
    check_image("hand-made via rootfs-tar:-", &out, &handmade::expected());
}

#[test]
fn explicit_size_is_honoured() {
    let env = require_root!();
    let tmp = tempdir();
    let layout = tmp.path().join("oci");
    Image::from_tars(&handmade::layers(), Compression::Gzip)
        .write_oci(&layout, None)
        .expect("write");
    let out_dir = fresh(tmp.path(), "out");
    let o = pull_ok(
        &env,
        &format!("oci:{}", layout.display()),
        &out_dir,
        &["--size", "128MiB", "--json"],
        None,
    );
    let out = out_dir.join("out.ext4");
    assert_eq!(fs::metadata(&out).expect("out").len(), 128 << 20, "{}", o.describe());
    check_json(&o, &out, JsonWant { layers: None, diff_ids: None, sanitised: handmade::SANITISED });
    check_image("hand-made with --size 128MiB", &out, &handmade::expected());
}

fn tiny_image(marker: &str) -> Image {
    let tar = LayerBuilder::new()
        .extend([Entry::dir("etc"), Entry::file("etc/which", marker.as_bytes())])
        .finish();
    Image::new(vec![LayerSpec::new(tar, Compression::Gzip)])
}

/// A worker image with only the container root, as `make demo` builds it: `--isolation vm`
/// names what is missing and what builds it; `auto` runs the container and says why, with the
/// same sentence in `doctor --json`, `pull --json` and pull's stderr line.
#[test]
fn a_worker_image_without_kernel_runs_the_container_and_says_why() {
    let env = require_root!();
    let tmp = tempdir();
    let image = tmp.path().join("worker-image");
    fs::create_dir(&image).expect("mkdir");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(env.worker_image.join("rootfs"))
        .arg(&image)
        .status()
        .expect("cp");
    assert!(cp.success(), "copying the worker image's rootfs");
    let env = Env { worker_image: image.clone(), ..env };
    let layout = tmp.path().join("oci");
    tiny_image("x\n").write_oci(&layout, None).expect("write");
    let source = format!("oci:{}", layout.display());
    let out_dir = fresh(tmp.path(), "out");
    let out = out_dir.join("out.ext4");

    let vm = env.pull(&source, &out, &["--isolation", "vm"]);
    expect_failure(&vm, &[5], &["has no vmlinux nor initramfs.cpio.gz", "make image", "minutes"]);
    expect_dir_holds(&out_dir, &[]);

    let d = doctor_json(&env.bin, &image, &[]);
    assert_eq!(d["default_isolation"], "container", "{d:#}");
    let reason = d["isolation_reason"].as_str().unwrap_or_default().to_string();
    // No kernel to boot a KVM probe with; a machine without /dev/kvm says that first.
    assert!(
        reason.starts_with("no microVM kernel: ") || reason.starts_with("no usable KVM: "),
        "{d:#}"
    );

    let json = pull_ok(&env, &source, &out_dir, &["--isolation", "auto", "--json"], None);
    let v = json_summary(&json);
    assert_eq!(v["isolation"], "container", "{}", json.describe());
    assert!(v["vmm"].is_null() && v["accel"].is_null(), "{}", json.describe());
    assert_eq!(v["isolation_reason"], reason.as_str(), "doctor and --json:\n{}", json.describe());
    assert!(sandbox_lines(&json).is_empty(), "--json prints no sandbox line:\n{}", json.describe());

    fs::remove_file(&out).expect("rm");
    let text = pull_ok(&env, &source, &out_dir, &["--isolation", "auto"], None);
    assert_eq!(sandbox_lines(&text), [sandbox_line(&v, "")], "{}", text.describe());
    assert_eq!(
        sandbox_line(&v, ""),
        format!("rootbox: sandbox: container ({reason})"),
        "doctor and stderr"
    );
}

#[test]
fn oci_tag_selects_the_manifest() {
    let env = require_root!();
    let tmp = tempdir();
    let layout = tmp.path().join("oci");
    let (one, two) = (tiny_image("one\n"), tiny_image("two\n"));
    let w =
        oci::write_oci_multi(&layout, &[(&one, Some("one")), (&two, Some("two"))]).expect("write");
    let out_dir = fresh(tmp.path(), "out");
    let o = pull_ok(&env, &format!("oci:{}:two", layout.display()), &out_dir, &["--json"], None);
    let out = out_dir.join("out.ext4");
    check_json(
        &o,
        &out,
        JsonWant {
            layers: Some(&w[1].layer_digests),
            diff_ids: Some(&w[1].diff_ids),
            sanitised: &[],
        },
    );
    let mut want =
        Model::from_layers(&[two.layers[0].tar.clone().expect("tar")]).expect("model").tree();
    want.forget_dir_mtimes();
    check_image("tag two", &out, &want);

    for (source, mention) in [
        (format!("oci:{}", layout.display()), None),
        (format!("oci:{}:three", layout.display()), Some("three")),
    ] {
        let dir = tmp.path().join("fail");
        fs::create_dir(&dir).expect("mkdir");
        let o = env.pull(&source, &dir.join("out.ext4"), &[]);
        expect_failure(&o, &[3], mention.as_slice());
        expect_dir_holds(&dir, &[]);
        fs::remove_dir(&dir).expect("rmdir");
    }
}

struct Debian {
    tar_path: PathBuf,
    tar: Vec<u8>,
    expected: Tree,
}

fn debian(env: &Env) -> Debian {
    let tar_path = debian::ensure_tar(&env.workspace).expect("Debian minbase fixture");
    let tar = fs::read(&tar_path).expect("read Debian tar");
    let expected = Model::from_layers(&[&tar]).expect("model of the Debian tar").tree();
    Debian { tar_path, tar, expected }
}

fn debian_layers(d: &Debian) -> Vec<Vec<u8>> {
    let layers = debian::split(&d.tar).expect("split");
    let model = Model::from_layers(&layers).expect("model of the re-cut layers").tree();
    assert_same("re-cut Debian layers vs the tar (model only)", &d.expected, &model);
    layers
}

#[test]
fn debian_minbase_oci() {
    let env = require_root!();
    let d = debian(&env);
    let [l1, l2, l3]: [Vec<u8>; 3] = debian_layers(&d).try_into().expect("three layers");
    let tmp = tempdir();
    let image = Image::new(vec![
        LayerSpec::new(l1, Compression::Zstd),
        LayerSpec::new(l2, Compression::Gzip),
        LayerSpec::new(l3, Compression::None),
    ]);
    let layout = tmp.path().join("oci");
    let w: Written = image.write_oci(&layout, Some("bookworm")).expect("write");
    let out_dir = fresh(tmp.path(), "out");
    let source = format!("oci:{}:bookworm", layout.display());
    let o = pull_ok(&env, &source, &out_dir, &["--json"], None);
    let out = out_dir.join("out.ext4");
    check_json(
        &o,
        &out,
        JsonWant { layers: Some(&w.layer_digests), diff_ids: Some(&w.diff_ids), sanitised: &[] },
    );
    check_image("Debian minbase via oci (3 layers)", &out, &d.expected);
}

#[test]
fn debian_minbase_docker_archive() {
    let env = require_root!();
    let d = debian(&env);
    let tmp = tempdir();
    let (o, out, w) =
        pull_docker_archive(&env, tmp.path(), &debian_layers(&d), DockerLayout::Legacy);
    check_json(&o, &out, JsonWant { layers: None, diff_ids: Some(&w.diff_ids), sanitised: &[] });
    check_image("Debian minbase via docker-archive", &out, &d.expected);
}

#[test]
fn debian_minbase_rootfs_tar() {
    let env = require_root!();
    let d = debian(&env);
    let tmp = tempdir();
    let out_dir = fresh(tmp.path(), "out");
    let o =
        pull_ok(&env, &format!("rootfs-tar:{}", d.tar_path.display()), &out_dir, &["--json"], None);
    let out = out_dir.join("out.ext4");
    check_json(&o, &out, JsonWant { layers: None, diff_ids: None, sanitised: &[] });
    check_image("Debian minbase via rootfs-tar", &out, &d.expected);
}

#[test]
fn usage_errors_exit_2() {
    let env = require_root!();
    let tmp = tempdir();
    let layout = tmp.path().join("oci");
    tiny_image("x\n").write_oci(&layout, None).expect("write");
    let source = format!("oci:{}", layout.display());
    let out_dir = fresh(tmp.path(), "out");
    let out = out_dir.join("out.ext4");
    let out_s = out.display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["pull", &source],
        vec!["pull", &source, "-o", &out_s, "--bogus-flag"],
        vec!["pull", &source, "-o", &out_s, "--isolation", "bogus"],
        vec!["pull", &source, "-o", &out_s, "--size", "many"],
        vec!["pull", &source, "-o", &out_s, "--max-entries", "-5"],
    ];
    for args in cases {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let o = rootbox_tests::run::run_with(&env.bin, &args, None);
        assert_eq!(o.code, 2, "usage error must exit 2:\n{}", o.describe());
        expect_dir_holds(&out_dir, &[]);
    }
}

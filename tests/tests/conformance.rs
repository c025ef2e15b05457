//! Tar conformance end to end: an image holding every case the tar reader must get right
//! (PAX values with newlines: a binary `security.capability`, names and link targets; a value
//! embedding a framed record; PAX global headers; device numbers Linux cannot hold; a whiteout
//! listed after its path was recreated; PAX 1.0 sparse files, hand-made and written by GNU tar;
//! times past 2446; records rootbox does not apply) built through every transport (`oci:`,
//! `docker-archive:`, `rootfs-tar:`, `docker://`) in the container and in the microVM. Each
//! image is checked field by field against the independent model, with the sanitisation
//! report's changes applied to it, and the report itself is checked.
//!
//! Needs root, loop devices, the rootbox binary and its worker image; the VM test also QEMU
//! and the worker kernel, the registry transport docker-registry and skopeo.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rootbox_tests::layer::{Entry as E, LayerBuilder};
use rootbox_tests::model::Model;
use rootbox_tests::oci::{Compression, DockerLayout, Image, LayerSpec};
use rootbox_tests::registry::{self, Registry};
use rootbox_tests::run::{expect_dir_holds, expect_fsck_clean, expect_success, json_summary};
use rootbox_tests::snapshot::{self, Mounted};
use rootbox_tests::tree::{assert_same, Mtime, Tree};
use rootbox_tests::{require_root, require_vm, Env};
use serde_json::Value;

/// `cap_dac_override,cap_fowner+ep` as a version-2 `vfs_cap_data`: the permitted mask's first
/// byte is 10, a newline, which the tar crate's PAX parser could not read.
const CAP_WITH_NEWLINE: [u8; 20] =
    [0x01, 0, 0, 0x02, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// What a reader splitting PAX headers on newlines would take for a link target.
const EMBEDDED: &[u8] = b"harmless\n30 linkpath=/etc/shadow-ish\nmore";
const FAR_FUTURE: i64 = 99_999_999_999;
/// ext4's largest time (256-byte inodes): 2^34 - 1 - 2^31, 2446-05-10.
const EXT4_TIME_MAX: i64 = (1 << 34) - 1 - (1 << 31);

fn lower() -> Vec<u8> {
    LayerBuilder::new()
        .extend([
            E::dir("d").mode(0o700),
            E::file("d/old", b"from the lower layer"),
            E::dir("dev"),
            E::file("dev/mem", b"a lower-layer file the out-of-range device replaces"),
            E::dir("usr"),
            E::dir("usr/bin"),
        ])
        .finish()
}

fn upper() -> Vec<u8> {
    let long = format!("opt/{}/with\nnewline", "n".repeat(120));
    let mut b = LayerBuilder::new();
    b.global(&[("comment", b"written by the conformance test"), ("mtime", b"1")]);
    b.extend([
        E::file("usr/bin/ping", b"#!/bin/true\n")
            .mode(0o755)
            .xattr("security.capability", &CAP_WITH_NEWLINE),
        E::file("etc/new\nline", b"a name holding a newline"),
        E::file(&long, b"a long name (PAX path) holding a newline"),
        E::hardlink("etc/link-to-newline", "etc/new\nline"),
        E::symlink("etc/target-with-newline", "over\nthere"),
        E::symlink("etc/embedded", "safe-target").pax("comment", EMBEDDED),
        E::file("etc/xattrs", b"")
            .xattr("user.binary", b"\x00\n\xff=\n")
            .xattr("trusted.dropped", b"1"),
        E::file("etc/libarchive", b"").pax("LIBARCHIVE.xattr.user.other", b"dg=="),
        E::file("etc/future", b"").mtime(Mtime::new(FAR_FUTURE, 5)),
        E::char_dev("dev/null", 1, 3),
        E::char_dev("dev/mem", 4097, 1),
        E::block_dev("dev/minor-too-big", 8, 1 << 20),
        E::dir("d").mode(0o750),
        E::file("d/new", b"from the upper layer"),
        E::whiteout("d"),
        E::sparse(
            "var/sparse",
            (8 << 20) + 5,
            vec![(4096, b"segment one".to_vec()), (6 << 20, vec![7; 5000])],
        ),
    ]);
    b.finish()
}

/// A layer written by GNU tar itself: a PAX 1.0 sparse file (its trailing empty segment
/// included), a binary capability xattr and a name with a newline.
fn gnu_tar_layer(tmp: &Path) -> Vec<u8> {
    let src = tmp.join("gnu-src");
    fs::create_dir_all(src.join("bin")).expect("mkdir");
    let sparse = fs::File::create(src.join("sparse.bin")).expect("create");
    sparse.set_len(16 << 20).expect("truncate");
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"HEAD", 0).expect("write");
    sparse.write_all_at(b"TAIL", (16 << 20) - 4).expect("write");
    fs::write(src.join("bin/capped"), b"capped\n").expect("write");
    xattr::set(src.join("bin/capped"), "security.capability", &CAP_WITH_NEWLINE).expect("setcap");
    fs::write(src.join("gnu\nnewline"), b"x").expect("write");
    let out = tmp.join("gnu.tar");
    let o = Command::new("tar")
        .args(["--format=posix", "--sparse", "--sparse-version=1.0", "--xattrs"])
        .args(["--xattrs-include=*", "--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&src)
        .arg("-cf")
        .arg(&out)
        .args(["sparse.bin", "bin", "gnu\nnewline"])
        .output()
        .expect("running GNU tar");
    assert!(o.status.success(), "GNU tar failed: {}", String::from_utf8_lossy(&o.stderr));
    fs::read(&out).expect("read gnu.tar")
}

/// The model's tree with what the sanitisation report says changed.
fn expected(layers: &[Vec<u8>]) -> Tree {
    let mut t = Model::from_layers(layers).expect("model").tree();
    t.forget_dir_mtimes();
    for gone in ["dev/mem", "dev/minor-too-big"] {
        t.nodes.remove(Path::new(gone));
    }
    if let Some(n) = t.nodes.get_mut(Path::new("etc/future")) {
        n.mtime = Some(Mtime::new(EXT4_TIME_MAX, 0));
    }
    t
}

fn check_image(what: &str, out: &Path, want: &Tree) {
    expect_fsck_clean(out);
    let mut got = snapshot::of_image(out).expect("snapshot");
    got.forget_dir_mtimes();
    assert_same(what, want, &got);
    let m = Mounted::loop_ro(out).expect("mount");
    let cap = xattr::get(m.path().join("usr/bin/ping"), "security.capability").expect("getxattr");
    assert_eq!(cap.as_deref(), Some(&CAP_WITH_NEWLINE[..]), "{what}: the capability's bytes");
    let link = fs::read_link(m.path().join("etc/embedded")).expect("readlink");
    assert_eq!(link, PathBuf::from("safe-target"), "{what}: no link target from inside a value");
    let sparse = fs::metadata(m.path().join("var/sparse")).expect("stat");
    assert!(
        sparse.blocks() * 512 < (1 << 20),
        "{what}: var/sparse keeps its holes ({} blocks)",
        sparse.blocks()
    );
}

/// Checks the sanitisation report of a conformance pull: every change, by kind and path.
fn check_report(what: &str, v: &Value, stderr: &str, with_lower: bool) {
    let records =
        v["sanitised"].as_array().unwrap_or_else(|| panic!("{what}: no sanitised array: {v}"));
    let mut seen: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or("?").to_string(),
                r["path"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut want: Vec<(&str, &str)> = vec![
        ("device", "/dev/mem"),
        ("device", "/dev/minor-too-big"),
        ("global_header", ""),
        ("pax_record", "/etc/libarchive"),
        ("time", "/etc/future"),
        ("xattr", "/etc/xattrs"),
    ];
    want.sort();
    let want: Vec<(String, String)> =
        want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(seen, want, "{what}: sanitised records");
    assert_eq!(v["sanitised_total"], 6, "{what}: total");
    let layer = records.iter().find(|r| r["path"] == "/dev/mem").map(|r| r["layer"].clone());
    let upper_digest = v["layers"][usize::from(with_lower)].clone();
    assert_eq!(layer, Some(upper_digest), "{what}: records name the upper layer");
    let lines: Vec<&str> =
        stderr.lines().filter(|l| l.starts_with("rootbox: sanitised:")).collect();
    assert_eq!(lines.len(), 1, "{what}: one summary line on stderr:\n{stderr}");
    assert!(
        lines[0].contains("6 places") && lines[0].contains("devices not created: 2"),
        "{}",
        lines[0]
    );
}

struct Inputs {
    _tmp: tempfile::TempDir,
    sources: Vec<(&'static str, String, Tree, bool)>,
    _registry: Option<Registry>,
}

/// The conformance image in every transport: (name, source, expected tree, has the lower
/// layer). `rootfs-tar:` takes one tar: the upper layer alone.
fn inputs(env: &Env, with_registry: bool) -> Inputs {
    let tmp = tempfile::Builder::new().prefix("rootbox-conformance-").tempdir().expect("tempdir");
    let layers = vec![lower(), upper(), gnu_tar_layer(tmp.path())];
    let image =
        Image::new(layers.iter().map(|t| LayerSpec::new(t.clone(), Compression::Gzip)).collect());
    let oci = tmp.path().join("oci");
    image.write_oci(&oci, Some("conformance")).expect("write oci");
    let archive = tmp.path().join("docker.tar");
    Image::from_tars(&layers, Compression::None)
        .write_docker_archive(&archive, DockerLayout::Legacy)
        .expect("write docker archive");
    let flat = tmp.path().join("flat.tar");
    fs::write(&flat, upper()).expect("write flat");
    let want = expected(&layers);
    let mut sources = vec![
        ("oci", format!("oci:{}:conformance", oci.display()), want.clone(), true),
        ("docker-archive", format!("docker-archive:{}", archive.display()), want.clone(), true),
        ("rootfs-tar", format!("rootfs-tar:{}", flat.display()), expected(&[upper()]), false),
    ];
    let reg = with_registry.then(|| {
        let r = Registry::start(None);
        r.push(&oci, "conformance", "conformance:v1", false);
        sources.push(("docker", format!("docker://{}/conformance:v1", r.host()), want, true));
        r
    });
    let _ = env;
    Inputs { _tmp: tmp, sources, _registry: reg }
}

fn pull_all(env: &Env, isolation: &str, inputs: &Inputs) -> Vec<Tree> {
    let mut trees = Vec::new();
    for (name, source, want, with_lower) in &inputs.sources {
        let out_dir =
            tempfile::Builder::new().prefix("rootbox-conformance-out-").tempdir().expect("tempdir");
        let out = out_dir.path().join("out.ext4");
        let o = env.pull(source, &out, &["--isolation", isolation, "--json", "--plain-http"]);
        expect_success(&o);
        expect_dir_holds(out_dir.path(), &["out.ext4"]);
        let what = format!("{name} in the {isolation}");
        eprintln!(
            "{what}: built {} bytes, {}",
            fs::metadata(&out).map(|m| m.len()).unwrap_or(0),
            o.stderr.trim()
        );
        check_report(&what, &json_summary(&o), &o.stderr, *with_lower);
        check_image(&what, &out, want);
        trees.push(snapshot::of_image(&out).expect("snapshot"));
    }
    trees
}

#[test]
fn every_case_through_every_transport_in_the_container() {
    let env = require_root!();
    let with_registry = registry::require("conformance registry").is_some();
    let inputs = inputs(&env, with_registry);
    pull_all(&env, "container", &inputs);
}

#[test]
fn every_case_through_every_transport_in_the_vm() {
    let env = require_vm!();
    let with_registry = registry::require("conformance registry").is_some();
    let inputs = inputs(&env, with_registry);
    pull_all(&env, "vm", &inputs);
}

#[test]
fn terabytes_of_holes_build_in_seconds() {
    let env = require_root!();
    let tmp = tempfile::Builder::new().prefix("rootbox-lastlog-").tempdir().expect("tempdir");
    // /var/log/lastlog of a uid near 2^32: 292 bytes per uid, all holes but the last record.
    let size: u64 = 292 * 4_000_000_000;
    let record = vec![0x5au8; 292];
    let tar = LayerBuilder::new()
        .extend([
            E::dir("var"),
            E::dir("var/log"),
            E::sparse("var/log/lastlog", size, vec![(size - 292, record.clone())]),
        ])
        .finish();
    let oci = tmp.path().join("oci");
    Image::from_tars(&[tar], Compression::Gzip).write_oci(&oci, None).expect("write oci");
    let out = tmp.path().join("out.ext4");
    let start = std::time::Instant::now();
    let o = env.pull(&format!("oci:{}", oci.display()), &out, &["--json"]);
    expect_success(&o);
    let took = start.elapsed();
    assert!(took.as_secs() < 120, "took {took:?}");
    expect_fsck_clean(&out);
    let m = Mounted::loop_ro(&out).expect("mount");
    let f = fs::File::open(m.path().join("var/log/lastlog")).expect("open");
    let meta = f.metadata().expect("stat");
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 <= 64 * 1024, "{} blocks allocated", meta.blocks());
    let mut back = vec![0u8; 292];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut back, size - 292).expect("read the last record");
    assert_eq!(back, record);
    let image_bytes = fs::metadata(&out).expect("out").len();
    eprintln!("lastlog of {size} bytes: built in {took:?}, image {image_bytes} bytes");
}

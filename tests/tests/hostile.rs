//! Hostile and broken images, one test per class. Every test checks that a canary beside the
//! output (and its directory) and the worker image are untouched; refused runs must leave no
//! output and no temp file; accepted runs are checked for confinement with a snapshot.
//!
//! Needs root, loop devices, the rootbox binary and its worker image (see `guard`).

use std::fs;
use std::io::Write;
use std::path::Path;

use rootbox_tests::digest::sha256_hex;
use rootbox_tests::layer::{self, Entry as E};
use rootbox_tests::model::Model;
use rootbox_tests::oci::{Compression, DockerLayout, Fault, Image, LayerSpec, Written};
use rootbox_tests::run::{
    error_lines, expect_dir_holds, expect_failure, expect_fsck_clean, expect_success, run_with,
    Outcome,
};
use rootbox_tests::scene::Scene;
use rootbox_tests::tree::{assert_same, Kind, Node, Tree};
use rootbox_tests::{require_root, snapshot, Env};

use crate::util::{layer, oci_of, write_oci};

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

/// A layer blob that inflates to `size` bytes of tar (one file of zeros), and its diff_id.
fn bomb(size: u64, compression: Compression) -> (Vec<u8>, String) {
    struct Tee<W: Write> {
        inner: W,
        hash: sha2::Sha256,
    }
    impl<W: Write> Write for Tee<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            use sha2::Digest;
            let n = self.inner.write(buf)?;
            self.hash.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    fn fill<W: Write>(w: &mut W, size: u64) {
        E::zeros("zeros", size).write_to(w).expect("write bomb");
        layer::write_end(w).expect("write end");
    }
    use sha2::Digest;
    match compression {
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let mut tee = Tee { inner: gz, hash: sha2::Sha256::new() };
            fill(&mut tee, size);
            let diff_id = format!("sha256:{}", hex::encode(tee.hash.finalize()));
            (tee.inner.finish().expect("gzip"), diff_id)
        }
        Compression::Zstd => {
            let z = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd");
            let mut tee = Tee { inner: z, hash: sha2::Sha256::new() };
            fill(&mut tee, size);
            let diff_id = format!("sha256:{}", hex::encode(tee.hash.finalize()));
            (tee.inner.finish().expect("zstd"), diff_id)
        }
        Compression::None => panic!("a bomb needs compression"),
    }
}

#[test]
fn decompression_bomb_hits_the_limit() {
    let env = require_root!();
    for compression in [Compression::Gzip, Compression::Zstd] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let (blob, diff_id) = bomb(256 << 20, compression);
        assert!(blob.len() < 4 << 20, "bomb blob is {} bytes", blob.len());
        let spec = LayerSpec::precompressed(blob, compression.media_type(), diff_id);
        let (source, _) = write_oci(&scene, vec![spec]);
        refused(&env, &scene, &source, &["--max-uncompressed", "64MiB"], &[3], &["limit"]);
    }
}

#[test]
fn entry_limit_is_enforced() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let mut entries = vec![E::dir("many")];
    entries.extend((0..50).map(|i| E::file(&format!("many/f{i}"), b"x")));
    let source = oci_of(&scene, vec![layer(entries)]);
    refused(&env, &scene, &source, &["--max-entries", "10"], &[4], &[]);
}

/// The first 12 hex digits of a digest: how an error can name a layer.
fn short(digest: &str) -> String {
    digest.trim_start_matches("sha256:")[..12].to_string()
}

/// The error line names the layer: its blob digest or diff_id (at least 12 hex digits).
fn assert_names_layer(o: &Outcome, w: &Written, i: usize) {
    let line = error_lines(o)[0].to_string();
    assert!(
        line.contains(&short(&w.layer_digests[i])) || line.contains(&short(&w.diff_ids[i])),
        "error line does not name layer {i} ({} / {}):\n{}",
        w.layer_digests[i],
        w.diff_ids[i],
        o.describe()
    );
}

fn payload() -> Vec<u8> {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    layer(vec![E::dir("etc"), E::file("etc/big", &big), E::file("etc/after", b"after\n")])
}

#[test]
fn truncated_compressed_blob_is_refused() {
    let env = require_root!();
    for compression in [Compression::Gzip, Compression::Zstd] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let base = LayerSpec::new(layer(vec![E::dir("etc")]), Compression::Gzip);
        let cut = LayerSpec::new(payload(), compression).fault(Fault::TruncatedBlob);
        let (source, w) = write_oci(&scene, vec![base, cut]);
        // Which side notices the early end (host decoder: 3, worker: 4) is not fixed by the
        // contract; that it is refused, cleanly, is.
        let o = refused(&env, &scene, &source, &[], &[3, 4], &[]);
        assert_names_layer(&o, &w, 1);
    }
}

#[test]
fn truncated_tar_inside_valid_compression_is_refused() {
    let env = require_root!();
    let full = payload();
    // Cut inside etc/big's data: the headers of etc/ and etc/big, then 50,000 of its bytes.
    let cut = full[..1024 + 50_000].to_vec();
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let (source, _) = write_oci(&scene, vec![LayerSpec::new(cut.clone(), compression)]);
        refused(&env, &scene, &source, &[], &[4], &[]);
    }
}

#[test]
fn blob_digest_mismatch_is_refused() {
    let env = require_root!();
    for compression in [Compression::Gzip, Compression::None] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let good = LayerSpec::new(layer(vec![E::dir("etc")]), Compression::Gzip);
        let bad = LayerSpec::new(payload(), compression).fault(Fault::BlobDigest);
        let (source, w) = write_oci(&scene, vec![good, bad]);
        let o = refused(&env, &scene, &source, &[], &[3], &[]);
        assert_names_layer(&o, &w, 1);
    }
}

#[test]
fn diff_id_mismatch_is_refused() {
    let env = require_root!();
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let bad = LayerSpec::new(payload(), compression).fault(Fault::DiffId);
        let (source, w) = write_oci(&scene, vec![bad]);
        let o = refused(&env, &scene, &source, &[], &[3], &[]);
        assert_names_layer(&o, &w, 0);
    }
    let scene = Scene::new(&env);
    let archive = scene.input.join("docker.tar");
    let img = Image::new(vec![LayerSpec::new(payload(), Compression::None).fault(Fault::DiffId)]);
    img.write_docker_archive(&archive, DockerLayout::Legacy).expect("write");
    refused(&env, &scene, &format!("docker-archive:{}", archive.display()), &[], &[3], &[]);
}

#[test]
fn missing_blob_is_refused() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let good = LayerSpec::new(layer(vec![E::dir("etc")]), Compression::Gzip);
    let gone = LayerSpec::new(payload(), Compression::Gzip).fault(Fault::MissingBlob);
    let (source, w) = write_oci(&scene, vec![good, gone]);
    let o = refused(&env, &scene, &source, &[], &[3], &[]);
    assert_names_layer(&o, &w, 1);

    for layout in [DockerLayout::Legacy, DockerLayout::Blobs] {
        eprintln!("variant: docker {layout:?}");
        let scene = Scene::new(&env);
        let archive = scene.input.join("docker.tar");
        let img =
            Image::new(
                vec![LayerSpec::new(payload(), Compression::None).fault(Fault::MissingBlob)],
            );
        img.write_docker_archive(&archive, layout).expect("write");
        refused(&env, &scene, &format!("docker-archive:{}", archive.display()), &[], &[3], &[]);
    }
}

#[test]
fn unsupported_media_type_is_refused() {
    let env = require_root!();
    for media_type in [
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        "application/octet-stream",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ] {
        eprintln!("variant: media type {media_type}");
        let scene = Scene::new(&env);
        let spec = LayerSpec::new(payload(), Compression::Gzip).media_type(media_type);
        let (source, _) = write_oci(&scene, vec![spec]);
        refused(&env, &scene, &source, &[], &[3], &[media_type]);
    }
}

#[test]
fn over_long_path_is_refused() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let long = "abcdefghi/".repeat(500) + "f";
    assert!(long.len() > 5000);
    let entry = E::file(&long, b"long\n");
    assert!(entry.name.len() > 100, "goes through a PAX path record");
    let source = oci_of(&scene, vec![layer(vec![E::dir("etc"), entry])]);
    refused(&env, &scene, &source, &[], &[4], &[]);
}

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
    let killed =
        std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -TERM");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "rootbox succeeded despite SIGTERM");
    scene.assert_refused_cleanly();
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

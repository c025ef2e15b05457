//! Guest-asset injection, `rootbox bundle`, and the machine contract (`--json` objects,
//! stderr form, exit codes) that callers such as a VM manager parse.
//!
//! Injection is checked by difference: the same image pulled with and without injection must
//! be identical everywhere except the injected paths (and the directories created for them),
//! and the injected paths must be root-owned copies of `assets/rootfs` and the `--inject` tree.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rootbox_tests::fixture::{debian, handmade};
use rootbox_tests::layer::{Entry, LayerBuilder};
use rootbox_tests::oci::{Compression, Image};
use rootbox_tests::run::{expect_fsck_clean, expect_success, json_summary, run_with, Outcome};
use rootbox_tests::scene::Scene;
use rootbox_tests::tree::{assert_same, Kind, Mtime, Node, Tree};
use rootbox_tests::{require_root, snapshot, Env};

use crate::util;

/// The fixed time rootbox gives its default assets.
const ASSET_MTIME: i64 = 1_700_000_000;

fn tempdir() -> tempfile::TempDir {
    util::tempdir("rootbox-inject-")
}

fn pull(env: &Env, source: &str, out: &Path, extra: &[&str], stdin: Option<Vec<u8>>) -> Outcome {
    let mut args: Vec<OsString> = vec!["pull".into(), source.into(), "-o".into(), out.into()];
    args.extend(["--worker-image".into(), env.worker_image.clone().into_os_string()]);
    args.extend(["--isolation", "container"].map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    run_with(&env.bin, &args, stdin)
}

/// The default assets as the image must hold them: (path, node).
fn default_assets(env: &Env) -> Vec<(String, Node)> {
    let root = env.workspace.join("assets/rootfs");
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).expect("read assets") {
            let e = e.expect("asset entry");
            let name = rel.join(e.file_name());
            let meta = e.metadata().expect("asset metadata");
            if meta.is_dir() {
                stack.push(name);
            } else {
                let content = fs::read(e.path()).expect("asset content");
                let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
                out.push((
                    name.display().to_string(),
                    Node::file(&content, mode).at(Mtime::new(ASSET_MTIME, 0)),
                ));
            }
        }
    }
    for unit in ["rootbox-net.service", "rootbox-firstboot.service"] {
        out.push((
            format!("etc/systemd/system/multi-user.target.wants/{unit}"),
            Node::symlink(&format!("../{unit}")).at(Mtime::new(ASSET_MTIME, 0)),
        ));
    }
    out
}

/// Checks `with` == `without` + `injected`, where directories `with` has and `without` lacks
/// are allowed only as parents of injected paths (root-owned).
fn assert_injected(what: &str, without: &Tree, with: &Tree, injected: &[(String, Node)]) {
    let mut expected = without.clone();
    // mke2fs's own lost+found carries the time of each build.
    let lost = PathBuf::from("lost+found");
    let mut with = with.clone();
    expected.nodes.remove(&lost);
    with.nodes.remove(&lost);
    let with = &with;
    let injected_paths: BTreeSet<PathBuf> =
        injected.iter().map(|(p, _)| PathBuf::from(p)).collect();
    for (p, n) in injected {
        expected.nodes.insert(PathBuf::from(p), n.clone());
    }
    // Directories created on the way to injected files: root-owned 0755, time not compared.
    for (p, n) in &with.nodes {
        if expected.nodes.contains_key(p) || n.kind != Kind::Dir {
            continue;
        }
        assert!(
            injected_paths.iter().any(|i| i.starts_with(p)),
            "{what}: unexpected new directory {}",
            p.display()
        );
        assert_eq!(
            (n.uid, n.gid, n.mode),
            (0, 0, 0o755),
            "{what}: created directory {}",
            p.display()
        );
        expected.nodes.insert(p.clone(), Node { mtime: n.mtime, ..Node::dir(0o755) });
    }
    assert_same(what, &expected, with);
}

fn handmade_layout(dir: &Path) -> String {
    let image = Image::from_tars(&handmade::layers(), Compression::Gzip);
    image.write_oci(dir, Some("hand")).expect("write OCI layout");
    format!("oci:{}:hand", dir.display())
}

#[test]
fn handmade_gets_default_assets_and_inject_tree_and_nothing_else_changes() {
    let env = require_root!();
    let tmp = tempdir();
    let source = handmade_layout(&tmp.path().join("oci"));
    let agent_dir = tmp.path().join("agent");
    fs::create_dir_all(agent_dir.join("opt/agent")).expect("mkdir");
    fs::write(agent_dir.join("opt/agent/vsock-agent"), b"\x7fELF fake agent").expect("write");
    fs::set_permissions(agent_dir.join("opt/agent/vsock-agent"), fs::Permissions::from_mode(0o750))
        .expect("chmod");
    std::os::unix::fs::symlink("vsock-agent", agent_dir.join("opt/agent/current")).expect("ln");

    let plain = tmp.path().join("plain.ext4");
    let o = pull(&env, &source, &plain, &["--no-default-assets"], None);
    expect_success(&o);
    let injected = tmp.path().join("injected.ext4");
    let agent = agent_dir.to_str().expect("utf-8 path");
    let o = pull(&env, &source, &injected, &["--inject", agent, "--json"], None);
    expect_success(&o);
    assert_eq!(json_summary(&o)["injected"], true, "{}", o.describe());
    expect_fsck_clean(&injected);

    let without = snapshot::of_image(&plain).expect("snapshot");
    let with = snapshot::of_image(&injected).expect("snapshot");
    let mut want = default_assets(&env);
    let agent_mtime = |p: &str| {
        let m = fs::symlink_metadata(agent_dir.join(p)).expect("stat");
        Mtime::new(std::os::unix::fs::MetadataExt::mtime(&m), 0)
    };
    want.push((
        "opt/agent/vsock-agent".into(),
        Node::file(b"\x7fELF fake agent", 0o750).at(agent_mtime("opt/agent/vsock-agent")),
    ));
    want.push((
        "opt/agent/current".into(),
        Node::symlink("vsock-agent").at(agent_mtime("opt/agent/current")),
    ));
    // The caller's directories keep their modes and times too.
    let dir_mode =
        fs::metadata(agent_dir.join("opt/agent")).expect("stat").permissions().mode() & 0o7777;
    want.push(("opt/agent".into(), Node::dir(dir_mode).at(agent_mtime("opt/agent"))));
    assert_injected("hand-made with assets + --inject", &without, &with, &want);
}

#[test]
fn debian_gets_default_assets_and_nothing_else_changes() {
    let env = require_root!();
    let tmp = tempdir();
    let tar = debian::ensure_tar(&env.workspace).expect("debian fixture");
    let source = format!("rootfs-tar:{}", tar.display());
    let plain = tmp.path().join("plain.ext4");
    expect_success(&pull(&env, &source, &plain, &["--no-default-assets"], None));
    let injected = tmp.path().join("injected.ext4");
    expect_success(&pull(&env, &source, &injected, &[], None));
    expect_fsck_clean(&injected);
    let without = snapshot::of_image(&plain).expect("snapshot");
    let with = snapshot::of_image(&injected).expect("snapshot");
    assert_injected("debian with default assets", &without, &with, &default_assets(&env));
}

/// An image that gets in the way of an asset: clear error (exit 4), nothing written, nothing
/// left behind.
fn refused(env: &Env, entries: Vec<Entry>, mentions: &str) {
    let scene = Scene::new(env);
    let tmp = tempdir();
    let mut b = LayerBuilder::new();
    b.extend(entries);
    let tar = tmp.path().join("flat.tar");
    fs::write(&tar, b.finish()).expect("write tar");
    let o = pull(env, &format!("rootfs-tar:{}", tar.display()), &scene.output(), &[], None);
    assert_eq!(o.code, 4, "{}", o.describe());
    let lines: Vec<&str> = o.stderr.lines().filter(|l| l.starts_with("rootbox: error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{}", o.describe());
    assert!(
        lines[0].contains("injecting files") && lines[0].contains(mentions),
        "{}",
        o.describe()
    );
    scene.assert_refused_cleanly();
}

#[test]
fn systemd_dir_symlinked_to_root_is_refused() {
    let env = require_root!();
    refused(&env, vec![Entry::dir("etc"), Entry::symlink("etc/systemd", "/")], "etc/systemd");
}

#[test]
fn asset_path_that_is_a_directory_is_refused() {
    let env = require_root!();
    refused(
        &env,
        vec![
            Entry::dir("var"),
            Entry::dir("var/lib"),
            Entry::dir("var/lib/rootbox"),
            Entry::dir("var/lib/rootbox/firstboot-pending"),
        ],
        "firstboot-pending",
    );
}

#[test]
fn dangling_var_lib_symlink_is_refused() {
    let env = require_root!();
    refused(
        &env,
        vec![Entry::dir("var"), Entry::symlink("var/lib", "/nonexistent/lib")],
        "var/lib",
    );
}

#[test]
fn bundle_round_trip_from_stdin() {
    let env = require_root!();
    let tmp = tempdir();
    let tar = handmade_flat(&tmp);
    let out = tmp.path().join("hand.tar.zst");
    let mut args: Vec<OsString> = ["bundle", "rootfs-tar:-", "-o"].map(OsString::from).to_vec();
    args.push(out.clone().into());
    args.extend(["--worker-image".into(), env.worker_image.clone().into_os_string()]);
    args.extend(
        ["--isolation", "container", "--name", "hand", "--kernel-ref", "vmlinux-6.1", "--json"]
            .map(OsString::from),
    );
    let o = run_with(&env.bin, &args, Some(fs::read(&tar).expect("read tar")));
    expect_success(&o);
    let v = json_summary(&o);
    let bundle_sha = rootbox_tests::run::file_sha256(&out);
    assert_eq!(
        v["sha256"].as_str().map(|s| s.trim_start_matches("sha256:")),
        Some(bundle_sha.as_str())
    );
    assert_eq!(v["size_bytes"].as_u64(), Some(fs::metadata(&out).expect("bundle").len()));

    let unpack = tmp.path().join("unpacked");
    fs::create_dir(&unpack).expect("mkdir");
    let dec = zstd::stream::read::Decoder::new(fs::File::open(&out).expect("open")).expect("zstd");
    let mut ar = tar::Archive::new(dec);
    let mut names = Vec::new();
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read");
        fs::write(unpack.join(&name), data).expect("write");
        names.push(name);
    }
    assert_eq!(names, ["manifest.json", "rootfs.ext4"]);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(unpack.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(m["name"], "hand");
    assert_eq!(m["arch"], "amd64");
    assert_eq!(m["kernel_ref"], "vmlinux-6.1");
    assert_eq!(m["source"]["reference"], "rootfs-tar:-");
    assert!(m["created"].as_str().is_some_and(|c| c.ends_with('Z')), "{m}");
    assert!(m["rootbox_version"].is_string());
    let rootfs = unpack.join("rootfs.ext4");
    let sha = rootbox_tests::run::file_sha256(&rootfs);
    assert_eq!(
        m["rootfs"]["sha256"].as_str().map(|s| s.trim_start_matches("sha256:")),
        Some(sha.as_str())
    );
    assert_eq!(
        m["rootfs"]["size_bytes"].as_u64(),
        Some(fs::metadata(&rootfs).expect("rootfs").len())
    );
    expect_fsck_clean(&rootfs);
    let tree = snapshot::of_image(&rootfs).expect("snapshot");
    let marker = tree.get("var/lib/rootbox/firstboot-pending").expect("injected marker");
    assert_eq!((marker.uid, marker.gid), (0, 0));
    // No temp files beside the bundle.
    let left: Vec<_> = fs::read_dir(tmp.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn handmade_flat(tmp: &tempfile::TempDir) -> PathBuf {
    let p = tmp.path().join("hand.tar");
    fs::write(&p, util::handmade_flat_tar()).expect("write");
    p
}

/// The documented machine contract: these keys and types stay, stderr errors are one line.
#[test]
fn json_and_error_contract_is_stable() {
    let env = require_root!();
    let tmp = tempdir();
    let tar = handmade_flat(&tmp);
    let out = tmp.path().join("c.ext4");
    let o = pull(&env, &format!("rootfs-tar:{}", tar.display()), &out, &["--json"], None);
    expect_success(&o);
    assert_eq!(o.stdout.lines().count(), 1, "stdout is one JSON object:\n{}", o.describe());
    let v = json_summary(&o);
    for (key, ok) in [
        ("path", v["path"].is_string()),
        ("sha256", v["sha256"].is_string()),
        ("size_bytes", v["size_bytes"].is_u64()),
        ("used_bytes", v["used_bytes"].is_u64()),
        ("inodes", v["inodes"].is_u64()),
        ("source", v["source"].is_string()),
        ("source_digest", v["source_digest"].is_string()),
        ("layers", v["layers"].is_array()),
        ("diff_ids", v["diff_ids"].is_array()),
        ("isolation", v["isolation"].is_string()),
        ("isolation_reason", v["isolation_reason"].is_string()),
        ("warnings", v["warnings"].is_array()),
        ("injected", v["injected"].is_boolean()),
        ("os_release", v["os_release"].is_object()),
        ("timings_ms", v["timings_ms"].is_object()),
    ] {
        assert!(ok, "--json field {key} missing or of the wrong type:\n{}", o.describe());
    }
    // Errors: exit code by class, one `rootbox: error:` line naming the source.
    let missing = pull(&env, "oci:/nonexistent/layout:x", &out, &[], None);
    assert_eq!(missing.code, 3, "{}", missing.describe());
    let lines: Vec<&str> = missing.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", missing.describe());
    assert!(lines[0].starts_with("rootbox: error: ") && lines[0].contains("/nonexistent/layout"));
    let usage = run_with(&env.bin, &["pull".into()], None);
    assert_eq!(usage.code, 2, "{}", usage.describe());
}

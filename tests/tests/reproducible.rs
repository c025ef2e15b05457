//! Reproducible output, end to end: the same image and options give the same ext4 bytes,
//! build after build and under concurrency, in the container and in the microVM; without the
//! canonicalising pass they do not, and `rootbox diff` names what differs.
//!
//! Needs root, loop devices, the rootbox binary and its worker image (see `guard`); the
//! microVM test needs QEMU (`require_vm`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use rootbox_tests::fixture::{debian, handmade};
use rootbox_tests::oci::{Compression, LayerSpec};
use rootbox_tests::run::{
    expect_fsck_clean, expect_success, file_sha256, json_summary, run_with, run_with_env, Outcome,
};
use rootbox_tests::scene::Scene;
use rootbox_tests::{require_root, require_vm, Env};

use crate::util::{self, fresh, oci_of, write_oci};

fn tempdir() -> tempfile::TempDir {
    util::tempdir("rootbox-repro-")
}

/// Builds `source` into `<tmp>/<name>/out.ext4` with `extra` flags; checks the report's
/// sha256 against the file and the image with e2fsck; returns the path and its sha256.
fn build(env: &Env, source: &str, tmp: &Path, name: &str, extra: &[&str]) -> (PathBuf, String) {
    build_with(env, source, tmp, name, extra, &[])
}

fn build_with(
    env: &Env,
    source: &str,
    tmp: &Path,
    name: &str,
    extra: &[&str],
    vars: &[(&str, &Path)],
) -> (PathBuf, String) {
    let out = fresh(tmp, name).join("out.ext4");
    let mut args: Vec<&str> = vec!["--json"];
    args.extend(extra);
    let o = if vars.is_empty() {
        env.pull(source, &out, &args)
    } else {
        let mut a: Vec<OsString> =
            vec!["pull".into(), source.into(), "-o".into(), out.clone().into()];
        a.extend(["--worker-image".into(), env.worker_image.clone().into_os_string()]);
        a.push("--no-default-assets".into());
        if !extra.iter().any(|x| x.starts_with("--isolation")) {
            a.extend(["--isolation".into(), "container".into()]);
        }
        a.extend(args.iter().map(OsString::from));
        run_with_env(&env.bin, &a, None, vars)
    };
    expect_success(&o);
    let sha = file_sha256(&out);
    let v = json_summary(&o);
    assert_eq!(v["sha256"].as_str(), Some(format!("sha256:{sha}").as_str()), "{}", o.describe());
    expect_fsck_clean(&out);
    (out, sha)
}

fn diff(env: &Env, a: &Path, b: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<OsString> = vec!["diff".into(), a.into(), b.into()];
    args.extend(extra.iter().map(OsString::from));
    run_with(&env.bin, &args, None)
}

/// The Debian minbase tree re-cut into three layers of three compressions, as an OCI layout.
fn debian_oci(env: &Env, scene: &Scene) -> String {
    let tar = std::fs::read(debian::ensure_tar(&env.workspace).expect("Debian fixture"))
        .expect("read the Debian tar");
    let layers = debian::split(&tar).expect("split");
    let specs = layers
        .into_iter()
        .zip([Compression::Zstd, Compression::Gzip, Compression::None])
        .map(|(l, c)| LayerSpec::new(l, c))
        .collect();
    write_oci(scene, specs).0
}

fn scene(env: &Env) -> Scene {
    Scene::new(env)
}

/// The hand-made image and Debian as OCI layouts, one scene each (a scene writes its layout
/// at its input); the scenes must outlive the sources.
fn two_images(env: &Env) -> ([Scene; 2], [(&'static str, String); 2]) {
    let scenes = [scene(env), scene(env)];
    let handmade = oci_of(&scenes[0], handmade::layers());
    let debian = debian_oci(env, &scenes[1]);
    (scenes, [("hand-made", handmade), ("Debian", debian)])
}

/// Builds `source` twice with `extra`; fails with `rootbox diff`'s report unless the two
/// are the same bytes. Returns the first build and its sha256.
fn built_twice_the_same(
    env: &Env,
    what: &str,
    source: &str,
    tmp: &Path,
    extra: &[&str],
) -> (PathBuf, String) {
    let (a, sha_a) = build(env, source, tmp, &format!("{what}-1"), extra);
    let (b, sha_b) = build(env, source, tmp, &format!("{what}-2"), extra);
    if sha_a != sha_b {
        let d = diff(env, &a, &b, &[]);
        panic!("the {what} image built twice with {extra:?} differs:\n{}", d.stdout);
    }
    let d = diff(env, &a, &b, &[]);
    assert_eq!(d.code, 0, "{}", d.describe());
    assert!(d.stdout.ends_with("are identical\n"), "{}", d.describe());
    (a, sha_a)
}

#[test]
fn the_same_image_builds_to_the_same_bytes_in_the_container() {
    let env = require_root!();
    let tmp = tempdir();
    let (_scenes, images) = two_images(&env);
    for (what, source) in &images {
        built_twice_the_same(&env, what, source, tmp.path(), &[]);
    }
}

/// A later layer that deletes every file of a block group: resize2fs then marks the group as
/// holding no inodes, and the deleted inodes there (deletion and change times from the
/// clock, random generations) must still be cleared. 32,768 inodes fit a group here: the
/// first group fills with `a/` and the start of `b/`, the rest of `b/` lands in the second,
/// which the whiteout empties. The two builds' deletions lie seconds apart (each build
/// takes more than one).
#[test]
fn deleting_every_file_of_a_block_group_still_builds_the_same_bytes() {
    use rootbox_tests::layer::{Entry, LayerBuilder};
    let env = require_root!();
    let tmp = tempdir();
    let scene = scene(&env);
    let first = LayerBuilder::new()
        .extend([Entry::dir("a"), Entry::dir("b")])
        .extend((0..30_000).map(|i| Entry::file(&format!("a/f{i}"), b"x")))
        .extend((0..10_000).map(|i| Entry::file(&format!("b/f{i}"), b"x")))
        .finish();
    let second = LayerBuilder::new().push(Entry::whiteout("b")).finish();
    let source = oci_of(&scene, vec![first, second]);
    built_twice_the_same(&env, "group-emptied", &source, tmp.path(), &[]);
}

/// ext4's allocations on loop devices, traced (`scripts/alloc-trace.py`) while a test's
/// builds run, so that a failure shows where builds first placed blocks differently: the
/// flake this guards against has been seen only in full `make test` runs, never on demand.
/// Diagnosis only: builds of other tests alongside are in the trace too (the script leaves
/// out those of other images, not those of this image with other options).
struct AllocTrace {
    tracer: std::process::Child,
    path: PathBuf,
    script: PathBuf,
}

impl AllocTrace {
    /// Tracing into `path` once this returns; `None` (saying why) where tracefs is not usable.
    fn start(env: &Env, path: &Path) -> Option<Self> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let script = env.workspace.join("scripts/alloc-trace.py");
        let mut tracer = Command::new("python3")
            .arg(&script)
            .arg("record")
            .arg(path)
            .args(["--", "sh", "-c", "echo tracing; read _ || true"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| eprintln!("not tracing allocations: python3: {e}"))
            .ok()?;
        let mut line = String::new();
        if let Some(out) = tracer.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "tracing" {
            eprintln!("not tracing allocations: {} did not start", script.display());
            let _ = tracer.kill();
            let _ = tracer.wait();
            return None;
        }
        Some(Self { tracer, path: path.to_path_buf(), script })
    }

    /// Stops tracing (the tracer puts tracefs back as it found it).
    fn stop(mut self) -> Self {
        drop(self.tracer.stdin.take());
        let _ = self.tracer.wait();
        self
    }

    /// What `alloc-trace.py compare` says of the trace: only wanted when builds differ
    /// (it takes ~3 s of CPU on the eight builds' 80 MB trace).
    fn compare(&self) -> String {
        let args = [self.script.clone().into(), "compare".into(), self.path.clone().into()];
        let o = run_with(Path::new("python3"), &args, None);
        format!("{}{}", o.stdout, o.stderr)
    }
}

#[test]
fn eight_concurrent_builds_of_one_image_agree() {
    let env = require_root!();
    let s = scene(&env);
    let tmp = tempdir();
    let source = debian_oci(&env, &s);
    let trace = AllocTrace::start(&env, &tmp.path().join("alloc.trace"));
    let shas: Vec<(PathBuf, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (env, source, tmp) = (&env, &source, tmp.path());
                scope.spawn(move || build(env, source, tmp, &format!("build-{i}"), &[]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a build thread panicked")).collect()
    });
    let traced = trace.map(AllocTrace::stop);
    let (first, want) = &shas[0];
    for (path, sha) in &shas[1..] {
        if sha != want {
            let d = diff(&env, first, path, &[]);
            let traced = traced.as_ref().map_or("(not traced)".into(), AllocTrace::compare);
            panic!(
                "{} differs from {}:\n{}\nallocations traced:\n{traced}",
                path.display(),
                first.display(),
                d.stdout
            );
        }
    }
}

#[test]
fn without_the_canonicalising_pass_builds_differ_and_rootbox_diff_names_the_fields() {
    let env = require_root!();
    let s = scene(&env);
    let tmp = tempdir();
    let source = oci_of(&s, handmade::layers());
    let raw = ["--no-canonicalise"];
    let (a, sha_a) = build(&env, &source, tmp.path(), "raw-1", &raw);
    let (b, sha_b) = build(&env, &source, tmp.path(), "raw-2", &raw);
    assert_ne!(sha_a, sha_b, "two builds without the pass came out identical");
    let d = diff(&env, &a, &b, &[]);
    assert_eq!(d.code, 6, "rootbox diff exits 6 when the images differ:\n{}", d.describe());
    for named in
        ["i_generation differs in", "i_ctime_extra differs in", "directory blocks differ in"]
    {
        assert!(d.stdout.contains(named), "rootbox diff does not say {named:?}:\n{}", d.stdout);
    }
    let j = diff(&env, &a, &b, &["--json"]);
    assert_eq!(j.code, 6, "{}", j.describe());
    let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("diff --json is JSON");
    assert_eq!(v["identical"], false);
    let list = v["differences"].as_array().expect("a list of differences");
    let etc = list.iter().find(|d| {
        d["path"] == "/etc" && d["field"].as_str().is_some_and(|f| f.contains("i_generation"))
    });
    assert!(etc.is_some(), "no i_generation difference named by its path /etc:\n{}", j.stdout);
    // The pass itself is what makes the bytes agree: the same builds with it do.
    let (_, c1) = build(&env, &source, tmp.path(), "canonical-1", &[]);
    let (_, c2) = build(&env, &source, tmp.path(), "canonical-2", &[]);
    assert_eq!(c1, c2);
}

#[test]
fn source_date_epoch_sets_the_build_times_and_changes_only_them() {
    let env = require_root!();
    let s = scene(&env);
    let tmp = tempdir();
    let source = oci_of(&s, handmade::layers());
    let (a, _) = build(&env, &source, tmp.path(), "default", &[]);
    let epoch = Path::new("1700000000");
    let vars = [("SOURCE_DATE_EPOCH", epoch)];
    let (b, sha_b) = build_with(&env, &source, tmp.path(), "epoch-1", &[], &vars);
    let (_, sha_c) = build_with(&env, &source, tmp.path(), "epoch-2", &[], &vars);
    assert_eq!(sha_b, sha_c, "two builds with one SOURCE_DATE_EPOCH differ");
    let d = diff(&env, &a, &b, &["--json"]);
    assert_eq!(d.code, 6, "{}", d.describe());
    let v: serde_json::Value = serde_json::from_str(&d.stdout).expect("JSON");
    let sb_mkfs = v["differences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["structure"] == "superblock" && d["field"] == "s_mkfs_time");
    let detail = sb_mkfs.map(|d| d["detail"].as_str().unwrap_or_default().to_string());
    assert_eq!(detail.as_deref(), Some("0 vs 1700000000"), "{}", d.stdout);
}

#[test]
fn the_same_image_builds_to_the_same_bytes_in_the_microvm() {
    let env = require_vm!();
    let tmp = tempdir();
    let (_scenes, images) = two_images(&env);
    for (what, source) in &images {
        let vm = ["--isolation", "vm"];
        let (a, sha_a) = built_twice_the_same(&env, &format!("{what}-vm"), source, tmp.path(), &vm);
        // The container runs the host's kernel, the microVM its own: say whether that shows.
        let (c, sha_c) = build(&env, source, tmp.path(), &format!("{what}-container"), &[]);
        let same = if sha_c == sha_a { "the same bytes" } else { "different bytes" };
        let d = diff(&env, &a, &c, &[]);
        eprintln!("{what}: microVM and container build {same}\n{}", d.stdout);
    }
}

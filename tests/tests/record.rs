//! Reproducible builds from the outside: `pull --record` writes a build record naming the
//! build's inputs, environment and output, `--json` carries the same object, and
//! `rootbox verify RECORD` rebuilds it and says `identical` (exit 0) or `differs` (exit 6,
//! naming the values), leaving nothing behind in the temp dir it rebuilt in.
//! That the bytes themselves reproduce is `reproducible::`'s concern.

use std::ffi::OsString;
use std::fs;
use std::path::Path;

use rootbox_tests::digest::is_digest;
use rootbox_tests::fixture::handmade;
use rootbox_tests::oci::{Compression, Image, LayerSpec, Written};
use rootbox_tests::run::{
    expect_dir_holds, expect_failure, expect_success, file_sha256, json_summary, run_with_env,
    Outcome,
};
use rootbox_tests::{require_root, Env};
use serde_json::Value;

use crate::util::{self, fresh};

/// `rootbox verify`'s exit code when the rebuild differs (host/src/exit.rs).
const DIFFERS: i32 = 6;
/// The usage exit code.
const USAGE: i32 = 2;

fn tempdir() -> tempfile::TempDir {
    util::tempdir("rootbox-repro-")
}

/// The hand-made image as a tagged OCI layout of gzip, zstd and plain layers under `tmp`.
fn handmade_oci(tmp: &Path) -> (String, Written) {
    let [l1, l2, l3]: [Vec<u8>; 3] = handmade::layers().try_into().expect("three layers");
    let image = Image::new(vec![
        LayerSpec::new(l1, Compression::Gzip),
        LayerSpec::new(l2, Compression::Zstd),
        LayerSpec::new(l3, Compression::None),
    ]);
    let layout = tmp.join("oci");
    let w = image.write_oci(&layout, Some("hand")).expect("write OCI layout");
    (format!("oci:{}:hand", layout.display()), w)
}

/// `rootbox ARGS...` with `vars` in its environment.
fn rootbox(env: &Env, args: &[OsString], vars: &[(&str, &Path)]) -> Outcome {
    run_with_env(&env.bin, args, None, vars)
}

/// `rootbox verify RECORD --worker-image W EXTRA...` with a private TMPDIR, which must be
/// empty again afterwards: the rebuild's temp dir is removed.
fn verify(env: &Env, tmp: &Path, record: &Path, extra: &[&str]) -> Outcome {
    let private_tmp = tmp.join("verify-tmp");
    fs::create_dir_all(&private_tmp).expect("mkdir");
    let mut args: Vec<OsString> = vec!["verify".into(), record.into()];
    args.extend(["--worker-image".into(), env.worker_image.clone().into_os_string()]);
    args.extend(extra.iter().map(OsString::from));
    let o = rootbox(env, &args, &[("TMPDIR", &private_tmp)]);
    expect_dir_holds(&private_tmp, &[]);
    o
}

/// A container pull of the hand-made image with `--record RECORD --json` (and `vars`):
/// returns the `--json` object and the record as written.
fn pull_recorded(
    env: &Env,
    source: &str,
    out: &Path,
    record: &Path,
    vars: &[(&str, &Path)],
) -> (Value, Value) {
    let mut args: Vec<OsString> = vec!["pull".into(), source.into(), "-o".into(), out.into()];
    args.extend(["--worker-image".into(), env.worker_image.clone().into_os_string()]);
    args.extend(["--no-default-assets", "--isolation", "container", "--json"].map(OsString::from));
    args.extend(["--record".into(), record.into()]);
    let o = rootbox(env, &args, vars);
    expect_success(&o);
    let written: Value = serde_json::from_slice(&fs::read(record).expect("the record was written"))
        .unwrap_or_else(|e| panic!("the record is not JSON ({e}):\n{}", o.describe()));
    (json_summary(&o), written)
}

fn host_kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease").trim().to_string()
}

/// An RFC 9562 version 8 UUID, hyphenated lower-case.
fn is_uuid_v8(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && s.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && parts[2].starts_with('8')
        && parts[3].starts_with(['8', '9', 'a', 'b'])
}

/// Every field of the record, against what the build was and what it wrote.
fn check_record(r: &Value, source: &str, w: &Written, out: &Path, epoch: u64) {
    let ctx = serde_json::to_string_pretty(r).unwrap_or_default();
    assert_eq!(r["record_version"], 1, "{ctx}");
    assert!(r["rootbox_version"].as_str().is_some_and(|v| !v.is_empty()), "{ctx}");
    assert_eq!(r["source"], source, "the source exactly as typed:\n{ctx}");
    assert_eq!(r["image_digest"], w.manifest_digest.as_str(), "{ctx}");
    assert_eq!(r["layers"], serde_json::json!(w.layer_digests), "{ctx}");
    assert_eq!(r["platform"], "linux/amd64", "{ctx}");
    assert_eq!(
        r["isolation"],
        serde_json::json!({"sandbox": "container", "vmm": null, "accel": null}),
        "{ctx}"
    );
    let wid = r["worker_image_digest"].as_str().unwrap_or_default();
    assert!(is_digest(wid), "worker_image_digest:\n{ctx}");
    assert_eq!(r["host_kernel"], host_kernel().as_str(), "{ctx}");
    assert_eq!(
        r["options"],
        serde_json::json!({
            "size": "auto",
            "headroom": 20,
            "label": "rootfs",
            "injected_digest": null,
            "no_default_assets": true,
            "inject": null,
            "epoch": epoch,
            "canonicalise": true,
            "max_uncompressed": 64u64 << 30,
            "max_entries": 4_000_000,
        }),
        "{ctx}"
    );
    let id = &r["identity"];
    assert!(id["uuid"].as_str().is_some_and(is_uuid_v8), "identity.uuid:\n{ctx}");
    assert!(id["hash_seed"].as_str().is_some_and(is_uuid_v8), "identity.hash_seed:\n{ctx}");
    assert_ne!(id["uuid"], id["hash_seed"], "{ctx}");
    assert_eq!(id["epoch"], epoch, "{ctx}");
    assert_eq!(r["sha256"], format!("sha256:{}", file_sha256(out)), "{ctx}");
    assert_eq!(r["size_bytes"], fs::metadata(out).expect("output").len(), "{ctx}");
}

/// The lines of stdout.
fn lines(o: &Outcome) -> Vec<&str> {
    o.stdout.lines().collect()
}

#[test]
fn a_record_names_the_build_and_json_carries_it() {
    let env = require_root!();
    let tmp = tempdir();
    let (source, w) = handmade_oci(tmp.path());
    let out_dir = fresh(tmp.path(), "out");
    let out = out_dir.join("out.ext4");
    let rec_dir = fresh(tmp.path(), "records");
    let record = rec_dir.join("build.json");
    let (json, written) = pull_recorded(&env, &source, &out, &record, &[]);
    check_record(&written, &source, &w, &out, 0);
    assert_eq!(json["record"], written, "--json's record is not the file's");
    // Written whole, beside nothing: no temp file left.
    expect_dir_holds(&rec_dir, &["build.json"]);
    expect_dir_holds(&out_dir, &["out.ext4"]);
}

#[test]
fn verify_finds_a_recorded_build_identical() {
    let env = require_root!();
    let tmp = tempdir();
    let (source, _) = handmade_oci(tmp.path());
    let out = fresh(tmp.path(), "out").join("out.ext4");
    let record = tmp.path().join("build.json");
    let (_, written) = pull_recorded(&env, &source, &out, &record, &[]);
    let o = verify(&env, tmp.path(), &record, &[]);
    let sha = written["sha256"].as_str().unwrap_or_default();
    assert_eq!(lines(&o), [format!("identical: {sha}")], "{}", o.describe());
    assert_eq!(o.code, 0, "{}", o.describe());
}

/// A record whose sha256 (and host kernel) were changed after the build: verify rebuilds,
/// exits 6, and names both sha256s and the host kernel it recorded and has now.
#[test]
fn verify_of_a_tampered_record_says_what_differs() {
    let env = require_root!();
    let tmp = tempdir();
    let (source, w) = handmade_oci(tmp.path());
    let out = fresh(tmp.path(), "out").join("out.ext4");
    let record = tmp.path().join("build.json");
    // (The environment's values are paths to run_with_env.)
    let epoch = Path::new("1700000000");
    let (_, mut r) = pull_recorded(&env, &source, &out, &record, &[("SOURCE_DATE_EPOCH", epoch)]);
    check_record(&r, &source, &w, &out, 1_700_000_000);
    let fake = format!("sha256:{}", "0".repeat(64));
    r["sha256"] = fake.clone().into();
    fs::write(&record, serde_json::to_vec(&r).expect("json")).expect("tamper");

    let o = verify(&env, tmp.path(), &record, &[]);
    assert_eq!(o.code, DIFFERS, "{}", o.describe());
    let first = lines(&o).first().copied().unwrap_or_default().to_string();
    let rebuilt = first
        .strip_prefix(&format!("differs: record {fake}, rebuilt "))
        .unwrap_or_else(|| panic!("no differs line naming the record's sha256:\n{}", o.describe()));
    assert!(is_digest(rebuilt), "rebuilt {rebuilt:?}:\n{}", o.describe());
    assert!(
        o.stdout.contains("the environment is as recorded"),
        "nothing but the output changed:\n{}",
        o.describe()
    );
    assert!(
        o.stderr.contains("keep the rebuild with --keep PATH and compare with rootbox diff"),
        "{}",
        o.describe()
    );

    // The environment named: a record from another host kernel; the rebuild kept, as JSON.
    r["host_kernel"] = "0.0.0-elsewhere".into();
    fs::write(&record, serde_json::to_vec(&r).expect("json")).expect("tamper");
    let keep = tmp.path().join("rebuilt.ext4");
    let o = verify(&env, tmp.path(), &record, &["--keep", keep.to_str().expect("utf-8"), "--json"]);
    assert_eq!(o.code, DIFFERS, "{}", o.describe());
    let v = json_summary(&o);
    assert_eq!(v["verdict"], "differs", "{}", o.describe());
    assert_eq!(v["record_sha256"], fake.as_str(), "{}", o.describe());
    assert_eq!(v["rebuilt_sha256"], format!("sha256:{}", file_sha256(&keep)), "{}", o.describe());
    assert_eq!(
        v["differences"],
        serde_json::json!([{"field": "host_kernel", "record": "0.0.0-elsewhere", "now": host_kernel()}]),
        "{}",
        o.describe()
    );
    assert_eq!(v["kept"], keep.to_str().expect("utf-8"), "{}", o.describe());
    // The rebuild took the record's epoch, and ran where the build ran.
    assert_eq!(v["rebuilt"]["identity"], r["identity"], "{}", o.describe());
    assert_eq!(v["rebuilt"]["worker_image_digest"], r["worker_image_digest"], "{}", o.describe());
}

#[test]
fn verify_refuses_a_record_version_it_does_not_know() {
    let env = require_root!();
    let tmp = tempdir();
    let record = tmp.path().join("future.json");
    fs::write(&record, br#"{"record_version": 2, "source": "oci:/nowhere"}"#).expect("write");
    let o = verify(&env, tmp.path(), &record, &[]);
    expect_failure(&o, &[USAGE], &["record_version 2", "reads version 1 only"]);
    assert!(o.stdout.is_empty(), "{}", o.describe());
}

#[test]
fn a_malformed_source_date_epoch_is_a_usage_error() {
    let env = require_root!();
    let tmp = tempdir();
    let (source, _) = handmade_oci(tmp.path());
    let out_dir = fresh(tmp.path(), "out");
    let record = tmp.path().join("build.json");
    let mut args: Vec<OsString> =
        vec!["pull".into(), source.into(), "-o".into(), out_dir.join("out.ext4").into()];
    args.extend(["--worker-image".into(), env.worker_image.clone().into_os_string()]);
    args.extend(["--isolation", "container"].map(OsString::from));
    args.extend(["--record".into(), record.clone().into()]);
    let o = rootbox(&env, &args, &[("SOURCE_DATE_EPOCH", Path::new("yesterday"))]);
    expect_failure(&o, &[USAGE], &["SOURCE_DATE_EPOCH", "yesterday", "non-negative integer"]);
    expect_dir_holds(&out_dir, &[]);
    assert!(!record.exists(), "a failed pull wrote a record");
}

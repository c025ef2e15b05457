//! The microVM sandbox end to end (`--isolation vm`: QEMU, with TCG on machines without a
//! working KVM). Images built in the VM are checked field by field like the container path
//! and compared with what the container sandbox builds from the same input; a hostile subset
//! runs through the VM; and the lifecycle is exercised for real: the VMM killed mid-job, a
//! guest that never starts the worker, content several times larger than guest memory.
//!
//! Needs what the other end-to-end tests need (root, loop devices, the rootbox binary, the
//! worker image) plus `qemu-system-x86_64`, the worker image's `vmlinux` and
//! `initramfs.cpio.gz` (`make image`), and `vhost-device-vsock` (`make vsock-tool`) or
//! /dev/vhost-vsock. Without them a test prints `SKIP: ...`, or fails under ROOTBOX_STRICT=1.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rootbox_tests::digest::sha256_hex;
use rootbox_tests::fixture::{debian, handmade};
use rootbox_tests::layer::Entry as E;
use rootbox_tests::lifecycle::{
    expect_nothing_left, finish, noise_tar, processes_mentioning, pull_args, signal, spawn_rootbox,
};
use rootbox_tests::model::Model;
use rootbox_tests::oci::{Compression, Image, LayerSpec};
use rootbox_tests::run::{
    doctor_json, expect_dir_holds, expect_failure, expect_fsck_clean, expect_success, file_sha256,
    json_summary, sandbox_line, sandbox_lines, Outcome,
};
use rootbox_tests::scene::Scene;
use rootbox_tests::tree::{assert_same, Kind, Tree};
use rootbox_tests::{guard, require_vm, snapshot, Env};

use crate::util::{self, fresh, layer, oci_of, NoisePull};

// ---------------------------------------------------------------------------------------------
// Guard
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn tempdir() -> tempfile::TempDir {
    util::tempdir("rootbox-vm-test-")
}

const VM: &[&str] = &["--isolation", "vm", "--json"];
const CONTAINER: &[&str] = &["--isolation", "container", "--json"];

/// Pulls `source` once through the VM and once through the container; checks both reports
/// and images, and that the two images hold the same tree. Returns (vm, container) snapshots
/// and reports.
fn both_ways(env: &Env, source: &str, tmp: &Path) -> [(Tree, serde_json::Value); 2] {
    [("vm", VM), ("container", CONTAINER)].map(|(name, flags)| {
        let dir = fresh(tmp, name);
        let out = dir.join("out.ext4");
        let started = Instant::now();
        let o = env.pull(source, &out, flags);
        expect_success(&o);
        expect_dir_holds(&dir, &["out.ext4"]);
        let v = json_summary(&o);
        let ctx = o.describe();
        assert_eq!(v["isolation"], name, "isolation:\n{ctx}");
        if name == "vm" {
            assert_eq!(v["vmm"], "qemu", "vmm:\n{ctx}");
            assert!(v["accel"] == "tcg" || v["accel"] == "kvm", "accel:\n{ctx}");
            assert!(v["timings_ms"]["boot"].as_u64().is_some(), "boot time:\n{ctx}");
        } else {
            assert!(v["vmm"].is_null() && v["accel"].is_null(), "container vmm/accel:\n{ctx}");
        }
        let sha = v["sha256"].as_str().unwrap_or_default().trim_start_matches("sha256:");
        assert_eq!(sha, file_sha256(&out), "sha256 is not the file's:\n{ctx}");
        assert_eq!(v["size_bytes"].as_u64(), Some(fs::metadata(&out).expect("out").len()));
        eprintln!(
            "{source} via {name}: {:.1} s wall; timings_ms {}",
            started.elapsed().as_secs_f64(),
            v["timings_ms"]
        );
        expect_fsck_clean(&out);
        (snapshot::of_image(&out).expect("snapshot"), v)
    })
}

/// The VM's and the container's trees, compared: everything but the mtime mke2fs gives
/// lost+found (the time of the build, not content).
fn assert_same_build(what: &str, container: &Tree, vm: &Tree) {
    let (mut c, mut v) = (container.clone(), vm.clone());
    for t in [&mut c, &mut v] {
        if let Some(n) = t.nodes.get_mut(Path::new("lost+found")) {
            n.mtime = None;
        }
    }
    assert_same(what, &c, &v);
}

fn same_reports(vm: &serde_json::Value, container: &serde_json::Value) {
    for field in [
        "entries",
        "inodes",
        "uncompressed_bytes",
        "layers",
        "diff_ids",
        "warnings",
        "sanitised",
        "sanitised_total",
    ] {
        assert_eq!(vm[field], container[field], "{field} differs between vm and container");
    }
}

// ---------------------------------------------------------------------------------------------
// Same images as the container
// ---------------------------------------------------------------------------------------------

#[test]
fn handmade_in_vm_matches_expectation_and_container() {
    let env = require_vm!();
    let tmp = tempdir();
    let [l1, l2, l3]: [Vec<u8>; 3] = handmade::layers().try_into().expect("three layers");
    let image = Image::new(vec![
        LayerSpec::new(l1, Compression::Gzip),
        LayerSpec::new(l2, Compression::Zstd),
        LayerSpec::new(l3, Compression::None),
    ]);
    let layout = tmp.path().join("oci");
    image.write_oci(&layout, Some("hand")).expect("write OCI layout");
    let source = format!("oci:{}:hand", layout.display());
    let [(vm, vm_json), (container, c_json)] = both_ways(&env, &source, tmp.path());
    assert_same("hand-made through the VM", &handmade::expected(), &vm);
    assert_same_build("hand-made: VM result vs container result", &container, &vm);
    same_reports(&vm_json, &c_json);
    for (kind, path) in handmade::SANITISED {
        let records = vm_json["sanitised"].as_array().cloned().unwrap_or_default();
        assert!(
            records.iter().any(|r| r["kind"] == *kind && r["path"] == *path),
            "no VM sanitisation record ({kind}, {path}): {records:?}"
        );
    }
}

/// The Debian minbase tree through the VM. Under TCG this takes about 20-30 s on 2 cores
/// (the container: 3-4 s): guest sha256 and tar work run emulated.
#[test]
fn debian_in_vm_matches_expectation_and_container() {
    let env = require_vm!();
    let tar = debian::ensure_tar(&env.workspace).expect("Debian minbase fixture");
    let expected = Model::from_layers(&[fs::read(&tar).expect("read tar")]).expect("model").tree();
    let tmp = tempdir();
    let source = format!("rootfs-tar:{}", tar.display());
    let [(vm, vm_json), (container, c_json)] = both_ways(&env, &source, tmp.path());
    assert_same("Debian minbase through the VM", &expected, &vm);
    assert_same_build("Debian minbase: VM result vs container result", &container, &vm);
    same_reports(&vm_json, &c_json);
}

// ---------------------------------------------------------------------------------------------
// Hostile subset
// ---------------------------------------------------------------------------------------------

#[test]
fn traversal_is_refused_in_vm() {
    let env = require_vm!();
    for (entry, name) in [
        (E::raw(b"../../canary", b"pwned\n"), "canary"),
        (E::raw(b"a/../../canary", b"pwned\n").pax_path(), "canary"),
        (E::symlink("../../evil-link", "/"), "evil-link"),
    ] {
        let scene = Scene::new(&env);
        let source = oci_of(&scene, vec![layer(vec![E::dir("etc"), entry])]);
        let o = env.pull(&source, &scene.output(), &["--isolation", "vm"]);
        expect_failure(&o, &[4], &["refusing", name]);
        scene.assert_refused_cleanly();
    }
}

#[test]
fn symlink_ancestor_write_is_confined_in_vm() {
    let env = require_vm!();
    let scene = Scene::new(&env);
    let host_name = format!("rootbox-vm-hostile-{}", std::process::id());
    let mut entries = vec![
        E::dir("etc"),
        E::symlink("evil", "/"),
        E::symlink("up", "../../.."),
        E::symlink("etcl", "/etc"),
    ];
    entries.extend([
        E::file("evil/etc/x", b"x\n"),
        E::file("up/etc/y", b"y\n"),
        E::file(&format!("etcl/{host_name}"), b"z\n"),
    ]);
    let tars = vec![layer(entries)];
    let o = env.pull(&oci_of(&scene, tars.clone()), &scene.output(), &["--isolation", "vm"]);
    expect_success(&o);
    scene.assert_untouched();
    expect_dir_holds(&scene.out_dir, &["out.ext4"]);
    expect_fsck_clean(&scene.output());
    let got = snapshot::of_image(&scene.output()).expect("snapshot");
    for (path, content) in
        [("etc/x", &b"x\n"[..]), ("etc/y", b"y\n"), (&format!("etc/{host_name}"), b"z\n")]
    {
        let n = got.get(path).unwrap_or_else(|| panic!("{path} missing in the image"));
        assert_eq!((n.kind, n.sha256.clone()), (Kind::File, Some(sha256_hex(content))), "{path}");
    }
    assert!(!Path::new("/etc").join(&host_name).exists(), "written on the host's /etc");
    let mut want = Model::from_layers(&tars).expect("model").tree();
    want.forget_dir_mtimes();
    assert_same("symlink ancestors through the VM", &want, &got);
}

// ---------------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------------

/// Kill -9 the VMM while layers stream: a clear error naming the exit, and nothing left
/// behind: no QEMU or vsock daemon, no socket directory, no output or temp file.
#[test]
fn killing_the_vmm_mid_job_leaves_nothing_behind() {
    let env = require_vm!();
    let tmp = tempdir();
    let NoisePull { child, rx, out_dir, private_tmp, seen } =
        NoisePull::start(&env, tmp.path(), "vm");
    std::thread::sleep(Duration::from_secs(2));
    let qemu: Vec<String> = processes_mentioning(&out_dir.to_string_lossy())
        .into_iter()
        .filter(|p| p.contains("qemu-system"))
        .collect();
    assert_eq!(
        qemu.len(),
        1,
        "expected one QEMU writing into {}: {qemu:#?}\nrootbox said so far:\n{}",
        out_dir.display(),
        seen.join("\n")
    );
    let pid = qemu[0].split(':').next().expect("pid").to_string();
    signal(pid.parse().expect("a pid"), "KILL");
    let (code, lines) = finish(child, &rx, Duration::from_secs(60));
    let text = lines.join("\n");
    assert_eq!(code, 1, "exit code after the VMM died:\n{text}");
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("rootbox: error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{text}");
    assert!(errors[0].contains("qemu exited (signal: 9"), "the VMM's death is named:\n{text}");
    assert!(errors[0].contains("stopped unexpectedly"), "error line:\n{text}");
    expect_nothing_left(&[&out_dir, &private_tmp]);
}

/// A job that outlives `--job-timeout`: the VM is stopped and the error says why.
#[test]
fn job_timeout_stops_the_vm() {
    let env = require_vm!();
    let tmp = tempdir();
    let tar = tmp.path().join("noise.tar");
    noise_tar(&tar, 1, 512 << 20);
    let out_dir = fresh(tmp.path(), "out");
    let private_tmp = fresh(tmp.path(), "tmp");
    let args = pull_args(
        &env,
        &format!("rootfs-tar:{}", tar.display()),
        &out_dir.join("out.ext4"),
        &["--isolation", "vm", "--job-timeout", "4"],
    );
    let (child, rx) = spawn_rootbox(&env, &args, &[("TMPDIR", &private_tmp)]);
    let (code, lines) = finish(child, &rx, Duration::from_secs(120));
    let text = lines.join("\n");
    let o = Outcome { command: format!("{args:?}"), code, stdout: String::new(), stderr: text };
    expect_failure(&o, &[1], &["the job did not finish within 4 s (--job-timeout)"]);
    expect_nothing_left(&[&out_dir, &private_tmp]);
}

/// A guest that boots but never starts the worker (its initramfs runs `sleep`): the boot
/// timeout fires, the boot is tried once more, then a clear error; nothing left behind.
#[test]
fn guest_that_never_connects_hits_the_boot_timeout() {
    let env = require_vm!();
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        assert!(!guard::strict(), "ROOTBOX_STRICT=1 and /bin/busybox (busybox-static) is missing");
        eprintln!("SKIP: no /bin/busybox");
        return;
    }
    let tmp = tempdir();
    // A worker image whose initramfs never starts the worker.
    let root = fresh(tmp.path(), "initramfs-root");
    fs::create_dir(root.join("bin")).expect("mkdir");
    fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    let init = root.join("init");
    fs::write(
        &init,
        "#!/bin/busybox sh\n/bin/busybox echo 'not the worker'\nexec /bin/busybox sleep 100000\n",
    )
    .expect("write init");
    let img = fresh(tmp.path(), "image");
    use std::os::unix::fs::{symlink, PermissionsExt};
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).expect("chmod");
    let built = Command::new(env.workspace.join("images/build-initramfs.sh"))
        .arg(&root)
        .arg(img.join("initramfs.cpio.gz"))
        .output()
        .expect("build-initramfs.sh");
    assert!(
        built.status.success(),
        "build-initramfs.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    for f in ["rootfs", "vmlinux"] {
        symlink(env.worker_image.join(f), img.join(f)).expect("symlink");
    }
    let source_tar = tmp.path().join("tiny.tar");
    fs::write(&source_tar, layer(vec![E::dir("etc"), E::file("etc/x", b"x\n")])).expect("tar");
    let out_dir = fresh(tmp.path(), "out");
    let private_tmp = fresh(tmp.path(), "tmp");
    let mut args = pull_args(
        &env,
        &format!("rootfs-tar:{}", source_tar.display()),
        &out_dir.join("out.ext4"),
        &["--isolation", "vm", "--boot-timeout", "3"],
    );
    // This image, not the default one.
    let i = args.iter().position(|a| a == "--worker-image").expect("flag") + 1;
    args[i] = img.clone().into_os_string();
    let start = Instant::now();
    let (child, rx) = spawn_rootbox(&env, &args, &[("TMPDIR", &private_tmp)]);
    let (code, lines) = finish(child, &rx, Duration::from_secs(120));
    let took = start.elapsed();
    let text = lines.join("\n");
    let o =
        Outcome { command: format!("{args:?}"), code, stdout: String::new(), stderr: text.clone() };
    expect_failure(&o, &[1], &["boot timeout", "did not start the worker", "two boots"]);
    assert!(text.contains("not the worker"), "the guest's console is shown:\n{text}");
    assert!(took >= Duration::from_secs(6), "two boots of 3 s each took only {took:?}");
    expect_nothing_left(&[&out_dir, &private_tmp]);
}

/// 1 GiB of incompressible content through a 256 MiB guest: the worker streams. The guest's
/// own memory report (printed on its console, shown with ROOTBOX_DEBUG) must stay under the
/// guest size.
#[test]
fn content_four_times_guest_memory_streams() {
    let env = require_vm!();
    let tmp = tempdir();
    let tar = tmp.path().join("noise.tar");
    let sums = noise_tar(&tar, 4, 256 << 20);
    let out_dir = fresh(tmp.path(), "out");
    let out = out_dir.join("out.ext4");
    let args = pull_args(
        &env,
        &format!("rootfs-tar:{}", tar.display()),
        &out,
        &["--isolation", "vm", "--vm-memory", "256MiB", "--json"],
    );
    let start = Instant::now();
    let (child, rx) = spawn_rootbox(&env, &args, &[("ROOTBOX_DEBUG", Path::new("1"))]);
    let (code, lines) = finish(child, &rx, Duration::from_secs(900));
    let text = lines.join("\n");
    assert_eq!(code, 0, "1 GiB through a 256 MiB guest failed:\n{text}");
    eprintln!("1 GiB through the VM: {:.1} s", start.elapsed().as_secs_f64());
    let memory = lines
        .iter()
        .find_map(|l| l.split_once("rootbox-worker: memory: ").map(|(_, m)| m.to_string()))
        .unwrap_or_else(|| panic!("no memory report on the console:\n{text}"));
    eprintln!("guest memory: {memory}");
    let mib = |key: &str| -> u64 {
        let rest = memory.split_once(key).map(|(_, r)| r).unwrap_or_default();
        rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
    };
    assert!(mib("total ") <= 256, "guest bigger than asked: {memory}");
    assert!(mib("peak used ") < 200, "guest memory use grew with the content: {memory}");
    expect_fsck_clean(&out);
    let got = snapshot::of_image(&out).expect("snapshot");
    for (name, sum) in sums {
        let n = got.get(&name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(n.sha256.as_deref(), Some(sum.as_str()), "{name} content");
        assert_eq!(n.size, 256 << 20, "{name} size");
    }
}

#[test]
fn doctor_names_the_vm_sandbox() {
    let env = require_vm!();
    let v = doctor_json(&env.bin, &env.worker_image, &[]);
    let vm = v["sandboxes"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "vm"))
        .unwrap_or_else(|| panic!("no vm sandbox:\n{v:#}"));
    assert_eq!(vm["usable"], true, "{v:#}");
    assert_eq!(vm["vmm"], "qemu", "{v:#}");
    assert!(vm["accel"] == "tcg" || vm["accel"] == "kvm", "{v:#}");
    // auto: the microVM only with KVM; as root (these tests are) the container otherwise.
    let reason = v["isolation_reason"].as_str().unwrap_or_default();
    if vm["accel"] == "kvm" {
        assert_eq!(v["default_isolation"], "vm", "{v:#}");
        assert_eq!(v["default_accel"], "kvm", "{v:#}");
        assert!(reason.starts_with("KVM works"), "{v:#}");
    } else {
        assert_eq!(v["default_isolation"], "container", "{v:#}");
        assert!(v["default_vmm"].is_null() && v["default_accel"].is_null(), "{v:#}");
        let verdict = reason.strip_prefix("no usable KVM: ").unwrap_or_else(|| panic!("{v:#}"));
        let detail = vm["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(verdict), "the vm sandbox's KVM note is the reason:\n{v:#}");
    }
}

/// `--isolation auto` with the whole worker image: `doctor --json`, `pull --json` and pull's
/// stderr line name the same sandbox with the same reason, whether the KVM verdict was just
/// probed (doctor, with an empty private cache) or read from the cache (the pulls); and
/// `--isolation vm` says why it runs as it does.
#[test]
fn auto_doctor_and_pull_agree() {
    let env = require_vm!();
    let scene = Scene::new(&env);
    let runtime = tempdir();
    let vars = [("XDG_RUNTIME_DIR", runtime.path())];
    let d = doctor_json(&env.bin, &env.worker_image, &vars);
    if d["isolation_reason"].as_str().is_some_and(|r| r.contains("probe boot")) {
        let cache = runtime.path().join("rootbox/kvm-probe");
        assert!(cache.is_file(), "doctor probed but cached no verdict:\n{d:#}");
    }
    let source = oci_of(&scene, vec![layer(vec![E::dir("etc"), E::file("etc/x", b"x\n")])]);
    let pull = |flags: &[&str]| {
        let args = pull_args(&env, &source, &scene.output(), flags);
        let o = rootbox_tests::run::run_with_env(&env.bin, &args, None, &vars);
        expect_success(&o);
        o
    };
    let json = pull(&["--isolation", "auto", "--json"]);
    let v = json_summary(&json);
    for (pull, doctor) in [
        ("isolation", "default_isolation"),
        ("vmm", "default_vmm"),
        ("accel", "default_accel"),
        ("isolation_reason", "isolation_reason"),
    ] {
        assert_eq!(
            v[pull],
            d[doctor],
            "pull's {pull} is not doctor's {doctor}:\n{d:#}\n{}",
            json.describe()
        );
    }
    let text = pull(&["--isolation", "auto"]);
    assert_eq!(sandbox_lines(&text), [sandbox_line(&d, "default_")], "{}", text.describe());

    let vm = pull(&["--isolation", "vm", "--json"]);
    let v = json_summary(&vm);
    let reason = v["isolation_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("asked for with --isolation vm; "), "{}", vm.describe());
    if v["accel"] == "tcg" {
        assert!(reason.contains("no usable KVM: ") && reason.contains("TCG"), "{}", vm.describe());
    }
}

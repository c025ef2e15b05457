//! Nothing left, nothing leaked: `kill -9` of rootbox mid-pull leaves no file beside OUT, no
//! process and no loop device, in both sandboxes (the microVM's socket directory, which
//! needs a name, is removed by the next run); local sources are opened beneath their root,
//! regular files only; and data a later layer deleted or replaced is not in the image's
//! bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rootbox_tests::lifecycle::{expect_nothing_left, finish, noise_tar, pull_args, spawn_rootbox};
use rootbox_tests::run::expect_dir_holds;
use rootbox_tests::{require_root, require_vm, Env};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("rootbox-leftovers-").tempdir().expect("tempdir")
}

fn fresh(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    fs::create_dir(&d).expect("mkdir");
    d
}

/// Loop devices whose backing file is under `dir` (a deleted O_TMPFILE still names it).
fn loops_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").expect("/sys/block").flatten() {
        let backing = e.path().join("loop/backing_file");
        if let Ok(b) = fs::read_to_string(&backing) {
            if b.contains(&needle) {
                out.push(format!("{}: {}", e.file_name().to_string_lossy(), b.trim()));
            }
        }
    }
    out
}

fn expect_no_loops_under(dir: &Path) {
    let start = Instant::now();
    loop {
        let left = loops_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "loop devices left behind: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a pull of 512 MiB of noise, kills rootbox with SIGKILL once the worker applies and
/// a second more has passed; returns (output dir, private TMPDIR, the tempdir holding them).
fn kill_9_mid_pull(env: &Env, isolation: &str) -> (PathBuf, PathBuf, tempfile::TempDir) {
    let tmp = tempdir();
    let input = fresh(tmp.path(), "in");
    let out_dir = fresh(tmp.path(), "out");
    let private_tmp = fresh(tmp.path(), "tmp");
    let tar = input.join("noise.tar");
    noise_tar(&tar, 2, 256 << 20);
    let source = format!("rootfs-tar:{}", tar.display());
    let args = pull_args(
        env,
        &source,
        &out_dir.join("out.ext4"),
        &["--isolation", isolation, "--progress"],
    );
    let (mut child, rx) = spawn_rootbox(env, &args, &[("TMPDIR", &private_tmp)]);
    let start = Instant::now();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("apply layer 1")) {
        assert!(start.elapsed() < Duration::from_secs(120), "never reached apply: {seen:#?}");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(child.try_wait().expect("try_wait"), None, "rootbox ended early: {seen:#?}");
    child.kill().expect("kill -9");
    let _ = child.wait();
    expect_nothing_left(&[&out_dir]);
    expect_no_loops_under(&out_dir);
    (out_dir, private_tmp, tmp)
}

#[test]
fn kill_9_mid_pull_leaves_nothing_in_the_container() {
    let env = require_root!();
    let (_, private_tmp, _tmp) = kill_9_mid_pull(&env, "container");
    expect_dir_holds(&private_tmp, &[]);
}

#[test]
fn kill_9_mid_pull_leaves_only_the_vm_socket_dir_which_the_next_run_removes() {
    let env = require_vm!();
    let (out_dir, private_tmp, tmp) = kill_9_mid_pull(&env, "vm");
    let left: Vec<String> = fs::read_dir(&private_tmp)
        .expect("read tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.len() == 1 && left[0].starts_with("rootbox-") && left[0].ends_with(".vm"),
        "expected the killed run's socket directory only: {left:?}"
    );
    // The next run (any source) removes it.
    let small = tmp.path().join("in/small.tar");
    noise_tar(&small, 1, 1 << 20);
    let out = out_dir.join("next.ext4");
    let args =
        pull_args(&env, &format!("rootfs-tar:{}", small.display()), &out, &["--isolation", "vm"]);
    let (child, rx) = spawn_rootbox(&env, &args, &[("TMPDIR", &private_tmp)]);
    let (code, lines) = finish(child, &rx, Duration::from_secs(300));
    assert_eq!(code, 0, "the next pull failed:\n{}", lines.join("\n"));
    expect_dir_holds(&private_tmp, &[]);
    expect_dir_holds(&out_dir, &["next.ext4"]);
}

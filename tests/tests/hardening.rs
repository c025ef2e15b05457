//! Sandbox hardening, measured from outside: the privileges of every sandbox process and the
//! image's mount flags read from /proc while a pull runs; a killed applier, a name too long
//! for a frame, control bytes in names, a full output filesystem and a stalled worker each
//! end the pull cleanly with the right sentence and exit code.
//!
//! A live sandbox is observed by stopping `rootbox` (SIGSTOP) once the worker reports it is
//! applying: the applier then waits on its socket and stays to be inspected.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rootbox_tests::layer::{Entry as E, LayerBuilder};
use rootbox_tests::lifecycle::{
    descendants, pull_args, signal, spawn_rootbox, status, wait_for_line,
};
use rootbox_tests::oci::{Compression, Image};
use rootbox_tests::run::{expect_dir_holds, expect_failure, Outcome};
use rootbox_tests::scene::Scene;
use rootbox_tests::{require_root, require_vm, Env};

use crate::util;

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_ADMIN: u32 = 21;

fn tempdir() -> tempfile::TempDir {
    util::tempdir("rootbox-hardening-")
}

/// An OCI layout holding one layer with `size` bytes of data that does not compress (so
/// shipping it takes a while) plus `extra` entries.
fn oci_with_data(dir: &Path, size: usize, extra: Vec<E>) -> String {
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut entries = vec![E::dir("data"), E::file("data/blob", &data)];
    entries.extend(extra);
    let tar = LayerBuilder::new().extend(entries).finish();
    let oci = dir.join("oci");
    Image::from_tars(&[tar], Compression::None).write_oci(&oci, None).expect("write oci");
    format!("oci:{}", oci.display())
}

/// `rootbox pull` running, stopped (SIGSTOP) while its worker applies.
struct Stopped {
    child: Child,
    stderr: std::sync::mpsc::Receiver<String>,
}

fn start_and_stop(env: &Env, source: &str, out: &Path, extra: &[&str]) -> Stopped {
    let mut flags = vec!["--progress"];
    flags.extend_from_slice(extra);
    if !extra.iter().any(|a| a.starts_with("--isolation")) {
        flags.extend(["--isolation", "container"]);
    }
    let (child, rx) = spawn_rootbox(env, &pull_args(env, source, out, &flags), &[]);
    wait_for_line(&rx, "apply layer 1", Duration::from_secs(120));
    signal(child.id(), "STOP");
    // Let the socket buffers drain into the applier, which then waits for more.
    std::thread::sleep(Duration::from_millis(500));
    Stopped { child, stderr: rx }
}

impl Drop for Stopped {
    /// A test that fails while rootbox is stopped must not leave it (and its sandbox) behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGKILL ends a stopped process too.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Stopped {
    /// Lets rootbox go on and waits for it: (exit code, stderr).
    fn resume(&mut self) -> (i32, String) {
        signal(self.child.id(), "CONT");
        let status = self.child.wait().expect("wait");
        let mut err = String::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            err.push_str(&l);
            err.push('\n');
        }
        use std::os::unix::process::ExitStatusExt;
        (status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)), err)
    }
}

fn caps(st: &BTreeMap<String, String>, field: &str) -> u64 {
    u64::from_str_radix(st.get(field).map(String::as_str).unwrap_or("ffffffffffffffff"), 16)
        .unwrap_or(u64::MAX)
}

fn has(mask: u64, cap: u32) -> bool {
    mask & (1 << cap) != 0
}

/// The worker's processes under a stopped pull: (outer init, session PID 1, applier).
fn sandbox_processes(s: &Stopped) -> (u32, u32, u32) {
    let procs = descendants(s.child.id());
    let workers: Vec<&(u32, u32, String)> =
        procs.iter().filter(|(_, _, comm)| comm == "rootbox-worker").collect();
    let init = workers.iter().find(|(_, pp, _)| *pp == s.child.id()).map(|w| w.0);
    let init = init.unwrap_or_else(|| panic!("no container init among {procs:?}"));
    let session = workers.iter().find(|(_, pp, _)| *pp == init).map(|w| w.0);
    let session = session.unwrap_or_else(|| panic!("no session under {init}: {procs:?}"));
    let applier = workers.iter().find(|(_, pp, _)| *pp == session).map(|w| w.0);
    let applier = applier.unwrap_or_else(|| panic!("no applier under {session}: {procs:?}"));
    (init, session, applier)
}

/// Mount points and options from `/proc/PID/mountinfo`.
fn mounts(pid: u32) -> BTreeMap<String, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            // mount point, per-mount options; after the " - " separator: fs type, source, super options
            Some((f.get(4)?.to_string(), f.get(5)?.to_string()))
        })
        .collect()
}

#[test]
fn privileges_and_mount_flags_measured_from_proc() {
    let env = require_root!();
    let tmp = tempdir();
    let source = oci_with_data(tmp.path(), 256 << 20, vec![]);
    let out = tmp.path().join("out.ext4");
    let mut stopped = start_and_stop(&env, &source, &out, &[]);
    let (init, session, applier) = sandbox_processes(&stopped);
    let report: Vec<String> =
        [("container init", init), ("session", session), ("applier", applier)]
            .iter()
            .map(|(n, p)| {
                let st = status(*p);
                format!(
                    "{n} {p}: CapEff {} CapBnd {} Seccomp {} NoNewPrivs {}",
                    st.get("CapEff").cloned().unwrap_or_default(),
                    st.get("CapBnd").cloned().unwrap_or_default(),
                    st.get("Seccomp").cloned().unwrap_or_default(),
                    st.get("NoNewPrivs").cloned().unwrap_or_default()
                )
            })
            .collect();
    eprintln!("{}", report.join("\n"));
    let (si, ss, sa) = (status(init), status(session), status(applier));
    for (name, st) in [("container init", &si), ("session", &ss), ("applier", &sa)] {
        assert!(!has(caps(st, "CapBnd"), CAP_DAC_READ_SEARCH), "{name} keeps CAP_DAC_READ_SEARCH");
    }
    assert_eq!(
        (caps(&si, "CapEff"), caps(&si, "CapBnd")),
        (0, 0),
        "the waiting init keeps nothing"
    );
    assert_eq!(ss.get("NoNewPrivs").map(String::as_str), Some("1"), "session no_new_privs");
    assert_eq!(sa.get("NoNewPrivs").map(String::as_str), Some("1"), "applier no_new_privs");
    assert_eq!(
        sa.get("Seccomp").map(String::as_str),
        Some("2"),
        "the applier runs under a seccomp filter"
    );
    assert!(!has(caps(&sa, "CapEff"), CAP_SYS_ADMIN) && !has(caps(&sa, "CapBnd"), CAP_SYS_ADMIN));
    let m = mounts(applier);
    let target = m.get("/target").unwrap_or_else(|| panic!("no /target mount: {m:?}"));
    for flag in ["nodev", "nosuid", "noexec"] {
        assert!(target.split(',').any(|o| o == flag), "/target lacks {flag}: {target}");
    }
    let sys = m.get("/proc/sys").unwrap_or_else(|| panic!("no /proc/sys mount: {m:?}"));
    assert!(sys.split(',').next() == Some("ro"), "/proc/sys is not read-only: {sys}");
    assert!(!m.contains_key("/proc/sysrq-trigger") || m["/proc/sysrq-trigger"].starts_with("ro"));
    let (code, err) = stopped.resume();
    assert_eq!(code, 0, "the pull then succeeds:\n{err}");
}

#[test]
fn an_applier_killed_from_outside_is_reported_as_killed() {
    let env = require_root!();
    let tmp = tempdir();
    let source = oci_with_data(tmp.path(), 256 << 20, vec![]);
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).expect("mkdir");
    let mut stopped = start_and_stop(&env, &source, &out_dir.join("out.ext4"), &[]);
    let (_, _, applier) = sandbox_processes(&stopped);
    signal(applier, "KILL");
    let (code, err) = stopped.resume();
    let o = Outcome { command: "pull".into(), code, stdout: String::new(), stderr: err };
    expect_failure(&o, &[1], &["killed by SIGKILL"]);
    assert!(!o.stderr.contains("memory"), "a kill is not a memory bound:\n{}", o.stderr);
    expect_dir_holds(&out_dir, &[]);
}

#[test]
fn a_stalled_container_job_times_out() {
    let env = require_root!();
    let tmp = tempdir();
    let source = oci_with_data(tmp.path(), 64 << 20, vec![]);
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).expect("mkdir");
    let mut stopped =
        start_and_stop(&env, &source, &out_dir.join("out.ext4"), &["--job-timeout", "3"]);
    let (_, _, applier) = sandbox_processes(&stopped);
    signal(applier, "STOP");
    let start = Instant::now();
    let (code, err) = stopped.resume();
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    let o = Outcome { command: "pull".into(), code, stdout: String::new(), stderr: err };
    expect_failure(&o, &[1], &["did not finish within 3 s"]);
    expect_dir_holds(&out_dir, &[]);
}

#[test]
fn a_name_too_long_for_a_frame_is_refused_with_exit_4_in_one_short_line() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let name = format!("{}/end", "n".repeat(300 * 1024));
    let tar = LayerBuilder::new().push(E::raw(name.as_bytes(), b"x").pax_path()).finish();
    let oci = scene.input.join("oci");
    Image::from_tars(&[tar], Compression::Gzip).write_oci(&oci, None).expect("write oci");
    let o = env.pull(&format!("oci:{}", oci.display()), &scene.output(), &[]);
    expect_failure(&o, &[4], &["refusing a name of 307204 bytes"]);
    let line = o.stderr.lines().find(|l| l.starts_with("rootbox: error:")).unwrap_or_default();
    assert!(line.len() < 3000, "{} bytes: {}", line.len(), &line[..200.min(line.len())]);
    assert!(line.contains("(307204 bytes)"), "the shortened name says its length: {line}");
    scene.assert_refused_cleanly();
}

#[test]
fn control_bytes_in_names_never_reach_the_terminal() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let tar =
        LayerBuilder::new().push(E::raw(b"evil\x1b]2;owned\x07\x1b[2J\r\n/../x", b"x")).finish();
    let oci = scene.input.join("oci");
    Image::from_tars(&[tar], Compression::Gzip).write_oci(&oci, None).expect("write oci");
    let o = env.pull(&format!("oci:{}", oci.display()), &scene.output(), &[]);
    expect_failure(&o, &[4], &["refusing"]);
    for b in [0x1bu8, 0x07, b'\r'] {
        assert!(!o.stderr.as_bytes().contains(&b), "byte {b:#x} reached stderr:\n{:?}", o.stderr);
    }
    assert!(o.stderr.contains("\\u{1b}"), "escaped, not dropped: {:?}", o.stderr);
    // One line besides the one naming the sandbox: the name's newline did not split it.
    let other: Vec<&str> =
        o.stderr.lines().filter(|l| !l.starts_with("rootbox: sandbox: ")).collect();
    assert_eq!(other.len(), 1, "one line: {:?}", o.stderr);
}

/// A 64 MiB tmpfs mounted for the output, unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn new() -> SmallFs {
        let d = tempdir();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "rootbox-full-test"])
            .arg(d.path())
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "mounting a tmpfs");
        SmallFs(d)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

fn full_output_fails_fast(env: &Env, isolation: &str) {
    let tmp = tempdir();
    let source = oci_with_data(tmp.path(), 160 << 20, vec![]);
    let fs = SmallFs::new();
    let start = Instant::now();
    let o = env.pull(&source, &fs.0.path().join("out.ext4"), &["--isolation", isolation]);
    let took = start.elapsed();
    eprintln!(
        "{isolation}: failed after {took:?}: {}",
        o.stderr.lines().last().unwrap_or_default()
    );
    expect_failure(&o, &[1], &["is full", &fs.0.path().display().to_string(), "needs about"]);
    assert!(took < Duration::from_secs(120), "{isolation}: {took:?}");
    expect_dir_holds(fs.0.path(), &[]);
}

#[test]
fn a_full_output_filesystem_fails_fast_in_the_container() {
    let env = require_root!();
    full_output_fails_fast(&env, "container");
}

#[test]
fn a_full_output_filesystem_fails_fast_in_the_vm() {
    let env = require_vm!();
    full_output_fails_fast(&env, "vm");
}

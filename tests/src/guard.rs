//! Decides whether an end-to-end test can run here. A test that cannot run says why: with
//! `ROOTBOX_STRICT=1` it fails, otherwise it prints `SKIP: <reason>` and returns. It never
//! passes silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the things under test live.
#[derive(Clone, Debug)]
pub struct Env {
    /// The workspace root (parent of `tests/`).
    pub workspace: PathBuf,
    /// The `rootbox` binary: `$ROOTBOX_BIN`, else `<workspace>/target/debug/rootbox`.
    pub bin: PathBuf,
    /// The worker image: `$ROOTBOX_WORKER_IMAGE`, else `<workspace>/build/worker-image`.
    pub worker_image: PathBuf,
}

/// The workspace root, from this crate's manifest directory.
pub fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

impl Env {
    /// Paths from the environment or the workspace defaults; nothing is checked.
    pub fn locate() -> Env {
        let workspace = workspace();
        let bin = std::env::var_os("ROOTBOX_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/debug/rootbox"));
        let worker_image = std::env::var_os("ROOTBOX_WORKER_IMAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("build/worker-image"));
        Env { workspace, bin, worker_image }
    }
}

fn is_root() -> bool {
    // The effective uid of this process, read without unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Why the end-to-end tests cannot run here, if they cannot.
pub fn missing(env: &Env) -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control (loop devices unavailable)".into());
    }
    if !env.bin.is_file() {
        return Some(format!("rootbox binary {} not built (set ROOTBOX_BIN)", env.bin.display()));
    }
    if !env.worker_image.is_dir() {
        return Some(format!(
            "worker image {} not built (set ROOTBOX_WORKER_IMAGE)",
            env.worker_image.display()
        ));
    }
    None
}

/// True when a missing capability must fail the test.
pub fn strict() -> bool {
    std::env::var("ROOTBOX_STRICT").is_ok_and(|v| v == "1")
}

/// Returns the environment when the tests can run; otherwise panics (strict) or prints
/// `SKIP: <reason>` and returns `None`. Use through [`require_root!`](crate::require_root).
pub fn require(test: &str) -> Option<Env> {
    let env = Env::locate();
    match missing(&env) {
        None => Some(env),
        Some(reason) if strict() => panic!("{test}: ROOTBOX_STRICT=1 and {reason}"),
        Some(reason) => {
            eprintln!("SKIP: {test}: {reason}");
            None
        }
    }
}

/// `let env = require_root!();` at the top of a test: returns from the test (after printing
/// `SKIP: ...`) when root, loop devices, the binary or the worker image are missing, and
/// fails it instead under `ROOTBOX_STRICT=1`.
#[macro_export]
macro_rules! require_root {
    () => {
        match $crate::guard::require(
            ::std::thread::current().name().unwrap_or(::std::module_path!()),
        ) {
            Some(env) => env,
            None => return,
        }
    };
}

pub fn runs(program: &Path, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn vsock_daemon_present() -> bool {
    let mut candidates = vec![PathBuf::from("vhost-device-vsock")];
    if let Some(c) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(c).join("bin/vhost-device-vsock"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cargo/bin/vhost-device-vsock"));
    }
    Path::new("/dev/vhost-vsock").exists() || candidates.iter().any(|c| runs(c, "--version"))
}

/// Why the VM tests cannot run here, beyond what `guard::missing` checks.
pub fn vm_missing(env: &Env) -> Option<String> {
    if !runs(Path::new("qemu-system-x86_64"), "--version") {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    for f in ["vmlinux", "initramfs.cpio.gz"] {
        if !env.worker_image.join(f).is_file() {
            return Some(format!("{} has no {f} (make image)", env.worker_image.display()));
        }
    }
    if !vsock_daemon_present() {
        return Some("neither vhost-device-vsock (make vsock-tool) nor /dev/vhost-vsock".into());
    }
    None
}

/// Like [`require`], and the microVM sandbox must be able to run too.
pub fn require_vm(test: &str) -> Option<Env> {
    let env = require(test)?;
    match vm_missing(&env) {
        None => Some(env),
        Some(why) if strict() => panic!("{test}: ROOTBOX_STRICT=1 and {why}"),
        Some(why) => {
            eprintln!("SKIP: {test}: {why}");
            None
        }
    }
}

/// `let env = require_vm!();`: as [`require_root!`](crate::require_root), and QEMU, the
/// worker kernel and initramfs and a vsock backend must be there too.
#[macro_export]
macro_rules! require_vm {
    () => {
        match $crate::guard::require_vm(
            ::std::thread::current().name().unwrap_or(::std::module_path!()),
        ) {
            Some(env) => env,
            None => return,
        }
    };
}

//! The QEMU backend: `qemu-system-x86_64 -M microvm` with the worker kernel and initramfs, the
//! output file as a raw virtio-blk drive, and a vsock device: vhost-user-vsock served by a
//! `vhost-device-vsock` daemon per job (its vhost-user protocol needs guest memory QEMU can
//! share: a memfd backend with `share=on`), or the kernel's vhost-vsock when
//! `/dev/vhost-vsock` exists. Only the command line is built here; vm.rs runs it.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BINARY: &str = "qemu-system-x86_64";
/// The vhost-user vsock daemon (crates.io `vhost-device-vsock`, installed by `make vsock-tool`).
pub const VSOCK_DAEMON: &str = "vhost-device-vsock";
/// The descriptor numbers QEMU finds the output at (opened read-write, and read-only: QEMU's
/// block layer asks its fd set for either access mode and takes only an exact match), and
/// the fd set holding both.
pub const OUTPUT_FDS: OutputFds = OutputFds { read_write: 3, read_only: 4 };
const OUTPUT_FDSET: u32 = 1;

/// Where QEMU inherits the output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFds {
    pub read_write: i32,
    pub read_only: i32,
}

/// How QEMU runs the guest's CPU: the host's KVM, or TCG (emulated, many times slower).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The guest's vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vsock {
    /// vhost-user-vsock-device on the daemon's vhost-user socket (the daemon owns the CID).
    VhostUser { socket: PathBuf },
    /// The kernel's vhost-vsock (`/dev/vhost-vsock`) with this guest CID.
    Kernel { cid: u32 },
    /// No vsock (the KVM probe).
    None,
}

/// One VM's QEMU configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub accel: Accel,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The raw output file, attached as the first virtio-blk device (/dev/vda), as the
    /// descriptor QEMU inherits at this number (QEMU never opens it by path).
    pub output: Option<OutputFds>,
    pub vsock: Vsock,
}

/// A path inside a QEMU `-drive`/`-object` option: commas are doubled.
fn opt_path(p: &Path) -> OsString {
    let s = p.as_os_str().to_string_lossy().replace(',', ",,");
    OsString::from(s)
}

fn joined(parts: &[&OsStr]) -> OsString {
    parts.iter().fold(OsString::new(), |mut acc, p| {
        acc.push(p);
        acc
    })
}

/// The full argument list (without the program).
pub fn args(c: &Config) -> Vec<OsString> {
    let mib = c.memory_mib;
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("-M");
    push("microvm,memory-backend=mem");
    push("-accel");
    push(match c.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    });
    push("-cpu");
    push(match c.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    });
    push("-smp");
    push("1");
    push("-m");
    push(&format!("{mib}M"));
    push("-object");
    push(&format!("memory-backend-memfd,id=mem,size={mib}M,share=on"));
    for s in ["-display", "none", "-nodefaults", "-no-user-config", "-no-reboot"] {
        push(s);
    }
    push("-serial");
    push("stdio");
    // QEMU's own seccomp filter: no obsolete calls, no privilege changes, no fork/exec, no
    // scheduler or resource changes.
    push("-sandbox");
    push("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    a.push("-kernel".into());
    a.push(c.kernel.as_os_str().to_owned());
    a.push("-initrd".into());
    a.push(c.initrd.as_os_str().to_owned());
    a.push("-append".into());
    a.push(c.cmdline.clone().into());
    if let Some(fds) = c.output {
        // An I/O error (a full disk on the host) is the guest's to see, not a reason to pause
        // the VM (QEMU's default werror=enospc would, and the job would wait for its timeout).
        // No image locking: the file is this VM's alone, and locks QEMU took on a shared open
        // file description would outlive a first, failed boot and refuse the second.
        for (fd, mode) in [(fds.read_write, "rw"), (fds.read_only, "ro")] {
            a.push("-add-fd".into());
            a.push(format!("fd={fd},set={OUTPUT_FDSET},opaque=rootbox-output-{mode}").into());
        }
        a.push("-drive".into());
        a.push(
            format!(
                "file=/dev/fdset/{OUTPUT_FDSET},format=raw,if=none,id=out,cache=unsafe,\
                 discard=unmap,werror=report,rerror=report,file.locking=off"
            )
            .into(),
        );
        a.push("-device".into());
        a.push("virtio-blk-device,drive=out".into());
    }
    match &c.vsock {
        Vsock::VhostUser { socket } => {
            a.push("-chardev".into());
            let p = opt_path(socket);
            a.push(joined(&[OsStr::new("socket,id=vs,path="), &p]));
            a.push("-device".into());
            a.push("vhost-user-vsock-device,chardev=vs".into());
        }
        Vsock::Kernel { cid } => {
            a.push("-device".into());
            a.push(format!("vhost-vsock-device,guest-cid={cid}").into());
        }
        Vsock::None => {}
    }
    a
}

/// `qemu-system-x86_64 ARGS` with nothing else set.
pub fn command(binary: &Path, c: &Config) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(args(c));
    cmd
}

/// `vhost-device-vsock --guest-cid CID --socket VHOST --uds-path UDS`.
pub fn daemon_command(binary: &Path, cid: u32, socket: &Path, uds: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--guest-cid")
        .arg(cid.to_string())
        .arg("--socket")
        .arg(socket)
        .arg("--uds-path")
        .arg(uds);
    cmd
}

/// The first line of `qemu-system-x86_64 --version`.
pub fn version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn value_of(a: &[String], flag: &str) -> Vec<String> {
        a.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect()
    }

    #[test]
    fn tcg_with_vhost_user_vsock() {
        let c = Config {
            accel: Accel::Tcg,
            memory_mib: 256,
            kernel: "/img/vmlinux".into(),
            initrd: "/img/initramfs.cpio.gz".into(),
            cmdline: "console=ttyS0 rootbox.port=1024".into(),
            output: Some(OUTPUT_FDS),
            vsock: Vsock::VhostUser { socket: "/t/vhost.sock".into() },
        };
        let a = strs(&args(&c));
        assert_eq!(value_of(&a, "-M"), ["microvm,memory-backend=mem"]);
        assert_eq!(value_of(&a, "-accel"), ["tcg"]);
        assert_eq!(value_of(&a, "-cpu"), ["max"]);
        assert_eq!(value_of(&a, "-smp"), ["1"]);
        assert_eq!(value_of(&a, "-m"), ["256M"]);
        assert_eq!(value_of(&a, "-object"), ["memory-backend-memfd,id=mem,size=256M,share=on"]);
        assert_eq!(value_of(&a, "-kernel"), ["/img/vmlinux"]);
        assert_eq!(value_of(&a, "-initrd"), ["/img/initramfs.cpio.gz"]);
        assert_eq!(value_of(&a, "-append"), ["console=ttyS0 rootbox.port=1024"]);
        assert_eq!(
            value_of(&a, "-add-fd"),
            ["fd=3,set=1,opaque=rootbox-output-rw", "fd=4,set=1,opaque=rootbox-output-ro"]
        );
        assert_eq!(
            value_of(&a, "-drive"),
            ["file=/dev/fdset/1,format=raw,if=none,id=out,cache=unsafe,discard=unmap,werror=report,rerror=report,file.locking=off"],
            "the output is an inherited descriptor; I/O errors reach the guest"
        );
        assert_eq!(
            value_of(&a, "-sandbox"),
            ["on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        );
        assert_eq!(
            value_of(&a, "-device"),
            ["virtio-blk-device,drive=out", "vhost-user-vsock-device,chardev=vs"]
        );
        assert_eq!(value_of(&a, "-chardev"), ["socket,id=vs,path=/t/vhost.sock"]);
        for f in ["-nodefaults", "-no-reboot", "-no-user-config"] {
            assert!(a.iter().any(|x| x == f), "{f} missing");
        }
        assert_eq!(value_of(&a, "-serial"), ["stdio"]);
    }

    #[test]
    fn kvm_with_kernel_vsock_and_probe() {
        let mut c = Config {
            accel: Accel::Kvm,
            memory_mib: 128,
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
            output: None,
            vsock: Vsock::Kernel { cid: 77 },
        };
        let a = strs(&args(&c));
        assert_eq!(value_of(&a, "-accel"), ["kvm"]);
        assert_eq!(value_of(&a, "-cpu"), ["host"]);
        assert_eq!(value_of(&a, "-device"), ["vhost-vsock-device,guest-cid=77"]);
        assert!(value_of(&a, "-drive").is_empty());
        c.vsock = Vsock::None;
        assert!(value_of(&strs(&args(&c)), "-device").is_empty());
    }

    #[test]
    fn daemon_args() {
        let cmd = daemon_command(
            Path::new("/bin/d"),
            3,
            Path::new("/t/v.sock"),
            Path::new("/t/vm.vsock"),
        );
        let a: Vec<String> = cmd.get_args().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(a, ["--guest-cid", "3", "--socket", "/t/v.sock", "--uds-path", "/t/vm.vsock"]);
    }
}

//! The microVM sandbox: the worker as PID 1 of a throwaway VM (Firecracker, else QEMU with
//! KVM, else QEMU with TCG), booted from the worker image's `vmlinux` and
//! `initramfs.cpio.gz`. The output file is the guest's /dev/vda; the protocol runs over
//! vsock, the guest connecting out to the host, which listens before boot. Layer content and
//! the filesystem being built are only ever seen by the guest kernel.
//!
//! This file holds what a VM plan is (VMM, accelerator, vsock backend) and builds the guest
//! command line; choice.rs decides the plan, machine.rs runs one VM (lifecycle), console.rs
//! keeps what it printed.

use std::path::PathBuf;
use std::time::Duration;

use super::qemu;
use crate::worker_image::WorkerImage;

pub const GUEST_CID: u32 = 3;
pub const OUTPUT_DEVICE: &str = "/dev/vda";
pub const KERNEL_FILE: &str = "vmlinux";
pub const INITRD_FILE: &str = "initramfs.cpio.gz";
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Qemu,
    Firecracker,
}

impl Vmm {
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
            Vmm::Firecracker => "firecracker",
        }
    }
}

pub use super::qemu::Accel;

/// Per-job settings (`--vm-memory`, `--boot-timeout`, `--job-timeout`).
#[derive(Debug, Clone)]
pub struct Options {
    pub memory_mib: u32,
    pub boot_timeout: Duration,
    pub job_timeout: Option<Duration>,
}

impl Options {
    /// From `--vm-memory` (bytes), `--boot-timeout` and `--job-timeout` (seconds, 0: none).
    pub fn from_flags(memory: u64, boot_secs: u64, job_secs: u64) -> Result<Options, String> {
        const MIB: u64 = 1 << 20;
        if !(128 * MIB..=64 * 1024 * MIB).contains(&memory) {
            return Err(format!("--vm-memory {memory} bytes: give 128MiB to 64GiB"));
        }
        if boot_secs == 0 {
            return Err("--boot-timeout must be at least 1 second".into());
        }
        Ok(Options {
            memory_mib: (memory / MIB) as u32,
            boot_timeout: Duration::from_secs(boot_secs),
            job_timeout: (job_secs > 0).then(|| Duration::from_secs(job_secs)),
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            memory_mib: 256,
            boot_timeout: Duration::from_secs(30),
            job_timeout: Some(Duration::from_secs(3600)),
        }
    }
}

/// How the host reaches the guest's vsock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockKind {
    /// A Unix socket per VM: Firecracker's device (no daemon) or vhost-device-vsock (QEMU).
    Hybrid { daemon: Option<PathBuf> },
    /// The kernel's vhost-vsock (`/dev/vhost-vsock`); the host side is AF_VSOCK.
    Kernel,
}

/// What will run: chosen once per job by [`super::choice::decide`].
#[derive(Debug, Clone)]
pub struct Plan {
    pub vmm: Vmm,
    pub accel: Accel,
    pub binary: PathBuf,
    pub vsock: VsockKind,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Why KVM is not used, when it is not.
    pub kvm_note: Option<String>,
}

impl Plan {
    pub fn describe(&self) -> String {
        let mut s = format!("{} with {}", self.vmm.name(), self.accel.name());
        if self.vmm == Vmm::Qemu {
            if let Some(v) = qemu::version(&self.binary) {
                s.push_str(&format!(" ({v})"));
            }
        }
        if let Some(n) = &self.kvm_note {
            s.push_str(&format!(" (KVM not used: {n})"));
        }
        s
    }
}

/// The worker kernel and initramfs of `image`, or the names of those it lacks.
pub fn assets(image: &WorkerImage) -> Result<(PathBuf, PathBuf), Vec<&'static str>> {
    let kernel = image.dir.join(KERNEL_FILE);
    let initrd = image.dir.join(INITRD_FILE);
    let missing: Vec<&'static str> = [(KERNEL_FILE, &kernel), (INITRD_FILE, &initrd)]
        .into_iter()
        .filter(|(_, p)| !p.is_file())
        .map(|(n, _)| n)
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok((kernel, initrd))
}

/// An executable `name` on PATH; for the vsock daemon also cargo's bin directory, where
/// `make vsock-tool` installs it.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if name == qemu::VSOCK_DAEMON {
        if let Some(c) = std::env::var_os("CARGO_HOME") {
            dirs.push(PathBuf::from(c).join("bin"));
        }
        if let Some(h) = std::env::var_os("HOME") {
            dirs.push(PathBuf::from(h).join(".cargo/bin"));
        }
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The host's TSC rate from `/proc/cpuinfo`'s first `cpu MHz` (the guest TSC runs at it).
pub fn parse_tsc_khz(cpuinfo: &str) -> Option<u64> {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "cpu MHz").then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .map(|mhz| (mhz * 1000.0) as u64)
        .filter(|&khz| khz > 0)
}

/// The guest kernel command line: a job's (`port` given) or a KVM probe's.
pub fn cmdline(port: Option<u32>) -> String {
    let mut s = String::from("console=ttyS0 panic=-1 quiet pci=off random.trust_cpu=on");
    // Without it about 1 microvm boot in 8 hangs calibrating the TSC under TCG.
    if let Some(khz) =
        std::fs::read_to_string("/proc/cpuinfo").ok().as_deref().and_then(parse_tsc_khz)
    {
        s.push_str(&format!(" tsc_early_khz={khz}"));
    }
    match port {
        Some(p) => s.push_str(&format!(" rootbox.port={p} rootbox.output={OUTPUT_DEVICE}")),
        None => s.push_str(" rootbox.probe=1"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_from_cpuinfo() {
        let c = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu MHz\t\t: 2599.998\ncache size\t: 1 KB\ncpu MHz\t\t: 1.0\n";
        assert_eq!(parse_tsc_khz(c), Some(2_599_998));
        assert_eq!(parse_tsc_khz("cpu MHz : x\n"), None);
        assert_eq!(parse_tsc_khz("processor : 0\n"), None);
    }

    #[test]
    fn cmdlines() {
        let job = cmdline(Some(1024));
        for w in ["console=ttyS0", "panic=-1", "rootbox.port=1024", "rootbox.output=/dev/vda"] {
            assert!(job.split(' ').any(|x| x == w), "{w} missing from {job}");
        }
        assert!(!job.contains("rootbox.probe"));
        let probe = cmdline(None);
        assert!(probe.ends_with(" rootbox.probe=1") && !probe.contains("rootbox.port"), "{probe}");
    }

    #[test]
    fn missing_assets_are_named() {
        let d = tempfile::tempdir().expect("tempdir");
        let img = WorkerImage { dir: d.path().to_path_buf(), found_via: "test" };
        assert_eq!(assets(&img).unwrap_err(), [KERNEL_FILE, INITRD_FILE]);
        std::fs::write(d.path().join(KERNEL_FILE), b"").expect("write");
        assert_eq!(assets(&img).unwrap_err(), [INITRD_FILE]);
        std::fs::write(d.path().join(INITRD_FILE), b"").expect("write");
        assert!(assets(&img).is_ok());
    }
}

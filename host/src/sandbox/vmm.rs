//! One description of a guest, turned into its VMM's command: QEMU's microvm machine (with
//! KVM or TCG) or Firecracker (its config file written first). The KVM probe and a job's boot
//! both start their VMs from here, so the two cannot drift apart.

use std::io;
use std::path::Path;
use std::process::Command;

use super::vm::{Accel, Vmm, GUEST_CID};
use super::{firecracker, qemu};

/// A guest's vsock device.
#[derive(Debug, Clone, Copy)]
pub enum Vsock<'a> {
    None,
    /// Hybrid vsock: guest connections arrive under `uds` (Firecracker's device, or the
    /// vhost-user daemon serving QEMU at `vhost`).
    Hybrid {
        uds: &'a Path,
        vhost: &'a Path,
    },
    /// The host kernel's vhost-vsock, the guest at `cid` (QEMU only).
    Kernel {
        cid: u32,
    },
}

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub struct Guest<'a> {
    pub vmm: Vmm,
    pub binary: &'a Path,
    pub accel: Accel,
    pub memory_mib: u32,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    /// The output drive, /dev/vda: Firecracker opens it by this path; QEMU inherits it as
    /// descriptors (`qemu::OUTPUT_FDS`), which the caller passes.
    pub output: Option<&'a Path>,
    pub vsock: Vsock<'a>,
}

/// The command that boots `g`; Firecracker's config file is written into `dir`, which must
/// outlive the VM.
pub fn command(g: &Guest, dir: &Path) -> io::Result<Command> {
    match g.vmm {
        Vmm::Qemu => Ok(qemu::command(
            g.binary,
            &qemu::Config {
                accel: g.accel,
                memory_mib: g.memory_mib,
                kernel: g.kernel.into(),
                initrd: g.initrd.into(),
                cmdline: g.cmdline.into(),
                output: g.output.map(|_| qemu::OUTPUT_FDS),
                vsock: match g.vsock {
                    Vsock::None => qemu::Vsock::None,
                    Vsock::Hybrid { vhost, .. } => qemu::Vsock::VhostUser { socket: vhost.into() },
                    Vsock::Kernel { cid } => qemu::Vsock::Kernel { cid },
                },
            },
        )),
        Vmm::Firecracker => {
            let cfg = firecracker::config_json(&firecracker::Config {
                kernel: g.kernel.into(),
                initrd: g.initrd.into(),
                cmdline: g.cmdline.into(),
                memory_mib: g.memory_mib,
                output: g.output.map(Into::into),
                vsock_uds: match g.vsock {
                    Vsock::Hybrid { uds, .. } => Some(uds.into()),
                    Vsock::None | Vsock::Kernel { .. } => None,
                },
                guest_cid: GUEST_CID,
            });
            let file = dir.join("vm.json");
            std::fs::write(&file, cfg.to_string())?;
            Ok(firecracker::command(g.binary, &file))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest<'a>(vmm: Vmm, vsock: Vsock<'a>, output: Option<&'a Path>) -> Guest<'a> {
        Guest {
            vmm,
            binary: Path::new("/usr/bin/vmm"),
            accel: Accel::Kvm,
            memory_mib: 128,
            kernel: Path::new("/img/vmlinux"),
            initrd: Path::new("/img/initramfs.cpio.gz"),
            cmdline: "console=ttyS0",
            output,
            vsock,
        }
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn the_probe_and_the_job_differ_only_in_what_they_attach() {
        let d = tempfile::tempdir().expect("tempdir");
        let probe = args(&command(&guest(Vmm::Qemu, Vsock::None, None), d.path()).expect("q"));
        let hybrid = Vsock::Hybrid { uds: Path::new("/t/vm.vsock"), vhost: Path::new("/t/v.sock") };
        let out = Some(Path::new("/proc/1/fd/7"));
        let job = args(&command(&guest(Vmm::Qemu, hybrid, out), d.path()).expect("q"));
        assert!(!probe.iter().any(|a| a.contains("fdset") || a.contains("vsock")));
        assert!(job.iter().any(|a| a.starts_with("file=/dev/fdset/1")));
        assert!(job.iter().any(|a| a == "vhost-user-vsock-device,chardev=vs"));
        // Everything the probe says, the job says too (same machine, accelerator, kernel).
        for a in &probe {
            assert!(job.contains(a), "the job's command lacks the probe's {a:?}");
        }
    }

    #[test]
    fn firecracker_gets_a_config_file_naming_the_output_and_vsock() {
        let d = tempfile::tempdir().expect("tempdir");
        let hybrid = Vsock::Hybrid { uds: Path::new("/t/vm.vsock"), vhost: Path::new("/t/v.sock") };
        let g = guest(Vmm::Firecracker, hybrid, Some(Path::new("/proc/1/fd/7")));
        let c = command(&g, d.path()).expect("firecracker");
        assert_eq!(
            args(&c),
            ["--no-api", "--config-file", &d.path().join("vm.json").to_string_lossy()]
        );
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("vm.json")).expect("cfg"))
                .expect("json");
        assert_eq!(cfg["drives"][0]["path_on_host"], "/proc/1/fd/7");
        assert_eq!(cfg["vsock"]["uds_path"], "/t/vm.vsock");
    }
}

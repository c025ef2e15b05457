//! The Firecracker backend: `firecracker --no-api --config-file CFG.json`, where the config
//! names the worker kernel (the ELF `vmlinux`) and initramfs, one vCPU and fixed memory, the
//! output file as a writable non-root drive (/dev/vda in the guest), and the vsock device with
//! its host-side Unix socket (`uds_path`; guest → host port P arrives at `<uds_path>_P`, the
//! same hybrid protocol vhost-device-vsock speaks for QEMU, see vsock.rs).
//!
//! Firecracker needs a working KVM. It cannot run on the machines this was written on (no
//! usable KVM there), so only the generated configuration is unit-tested; the shared vsock
//! wire is exercised for real through QEMU + vhost-device-vsock.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

pub const BINARY: &str = "firecracker";

/// One VM's Firecracker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub memory_mib: u32,
    /// The raw output file (first drive: /dev/vda).
    pub output: Option<PathBuf>,
    /// The vsock device's host-side Unix socket.
    pub vsock_uds: Option<PathBuf>,
    pub guest_cid: u32,
}

/// Extra kernel arguments Firecracker guests need: the VM ends when the guest resets through
/// the i8042 controller (Firecracker has no power-off device).
pub const CMDLINE_EXTRA: &str = "reboot=k i8042.noaux i8042.nomux i8042.dumbkbd";

/// The `--config-file` document.
pub fn config_json(c: &Config) -> Value {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut v = json!({
        "boot-source": {
            "kernel_image_path": path(&c.kernel),
            "initrd_path": path(&c.initrd),
            "boot_args": format!("{} {CMDLINE_EXTRA}", c.cmdline),
        },
        "machine-config": {
            "vcpu_count": 1,
            "mem_size_mib": c.memory_mib,
            "smt": false,
        },
        "drives": [],
    });
    if let Some(out) = &c.output {
        v["drives"] = json!([{
            "drive_id": "out",
            "path_on_host": path(out),
            "is_root_device": false,
            "is_read_only": false,
        }]);
    }
    if let Some(uds) = &c.vsock_uds {
        v["vsock"] = json!({ "guest_cid": c.guest_cid, "uds_path": path(uds) });
    }
    v
}

/// `firecracker --no-api --config-file CONFIG`.
pub fn command(binary: &Path, config_file: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--no-api").arg("--config-file").arg(config_file);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_for_a_job() {
        let c = Config {
            kernel: "/img/vmlinux".into(),
            initrd: "/img/initramfs.cpio.gz".into(),
            cmdline: "console=ttyS0 panic=-1 rootbox.port=1024 rootbox.output=/dev/vda".into(),
            memory_mib: 256,
            output: Some("/out/.o.ext4.tmp".into()),
            vsock_uds: Some("/t/vm.vsock".into()),
            guest_cid: 3,
        };
        let want = json!({
            "boot-source": {
                "kernel_image_path": "/img/vmlinux",
                "initrd_path": "/img/initramfs.cpio.gz",
                "boot_args": "console=ttyS0 panic=-1 rootbox.port=1024 rootbox.output=/dev/vda reboot=k i8042.noaux i8042.nomux i8042.dumbkbd",
            },
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 256, "smt": false },
            "drives": [{
                "drive_id": "out",
                "path_on_host": "/out/.o.ext4.tmp",
                "is_root_device": false,
                "is_read_only": false,
            }],
            "vsock": { "guest_cid": 3, "uds_path": "/t/vm.vsock" },
        });
        assert_eq!(config_json(&c), want);
    }

    #[test]
    fn config_for_a_probe() {
        let c = Config {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "rootbox.probe=1".into(),
            memory_mib: 128,
            output: None,
            vsock_uds: None,
            guest_cid: 3,
        };
        let v = config_json(&c);
        assert_eq!(v["drives"], json!([]));
        assert!(v.get("vsock").is_none());
        assert_eq!(v["machine-config"]["mem_size_mib"], 128);
        let a: Vec<String> = command(Path::new("/usr/bin/firecracker"), Path::new("/t/c.json"))
            .get_args()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(a, ["--no-api", "--config-file", "/t/c.json"]);
    }
}

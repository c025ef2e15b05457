//! Which sandbox runs a job, and why. [`Facts::probe`] is the only part that looks at the
//! machine (root, loop devices, the worker image, VMM binaries, vsock backends, and the KVM
//! probe boot); [`decide`] is a pure function of those facts that returns the plan with a
//! one-line reason, so its whole table is unit-tested without root, KVM or a VMM, and
//! `pull`, `bundle` and `doctor` print the same sentence. Nothing here starts a sandbox.
//!
//! `--isolation auto`, first match wins:
//!
//! | the microVM with KVM can run | the container can run | the microVM with TCG can run | auto picks |
//! |---|---|---|---|
//! | yes | any | any | the microVM with KVM (Firecracker, else QEMU) |
//! | no | yes | any | the container |
//! | no | no | yes | the microVM with TCG, as the last resort (said so) |
//! | no | no | no | nothing: an error naming what each lacks |
//!
//! The container can run with root, loop devices and a complete worker image root; the
//! microVM with KVM with the worker kernel and initramfs, a KVM probe boot that reached the
//! worker and Firecracker (or QEMU with a vsock backend); with TCG with the kernel and
//! initramfs, QEMU and a vsock backend.

use std::path::{Path, PathBuf};

use super::kvm::{self, Verdict};
use super::vm::{self, Accel, Vmm, VsockKind};
use super::Isolation;
use super::{firecracker, qemu, Plan, Unavailable};
use crate::worker_image::WorkerImage;

/// What was found on this machine; everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The effective uid is 0.
    pub root: bool,
    /// `/dev/loop-control` exists.
    pub loop_control: bool,
    /// What the worker image's container root lacks (empty: complete).
    pub rootfs_problems: Vec<String>,
    /// The worker image's microVM kernel and initramfs, or the names of those it lacks.
    pub vm_assets: Result<(PathBuf, PathBuf), Vec<&'static str>>,
    /// The worker image directory, for messages.
    pub image_dir: PathBuf,
    pub firecracker: Option<PathBuf>,
    pub qemu: Option<PathBuf>,
    /// QEMU's vsock backend: the kernel's vhost-vsock, else vhost-device-vsock; `None`: neither.
    pub qemu_vsock: Option<VsockKind>,
    /// The KVM verdict; `None` when not probed (`--isolation container`, or nothing could
    /// boot a probe: no kernel, no VMM, QEMU without vsock and no Firecracker).
    pub kvm: Option<Verdict>,
}

/// The chosen sandbox and the one-line reason `pull`, `bundle` and `doctor` print.
#[derive(Debug, Clone)]
pub struct Decision {
    pub plan: Plan,
    pub reason: String,
}

impl Decision {
    /// `container (REASON)` or `vm, qemu with tcg (REASON)`: what follows `sandbox: `.
    pub fn summary(&self) -> String {
        match &self.plan {
            Plan::Container => format!("container ({})", self.reason),
            Plan::Vm(p) => {
                format!("vm, {} with {} ({})", p.vmm.name(), p.accel.name(), self.reason)
            }
        }
    }
}

/// What the kernel build costs, for the message when the worker image lacks it.
pub const KERNEL_BUILD_HINT: &str =
    "`make image` builds them (a Linux kernel, once: about 5 minutes on 2 cores)";

impl Facts {
    /// Looks at this machine. Boots a KVM probe VM (5 s at most, cached per host boot) only
    /// when the answer can matter: not for `--isolation container`, and only when a VMM could
    /// use KVM with this worker image.
    pub fn probe(isolation: Isolation, image: &WorkerImage) -> Facts {
        let firecracker = vm::find_program(firecracker::BINARY);
        let qemu = vm::find_program(qemu::BINARY);
        let qemu_vsock = qemu.as_ref().and_then(|_| qemu_vsock());
        let vm_assets = vm::assets(image);
        let mut facts = Facts {
            root: nix::unistd::geteuid().is_root(),
            loop_control: Path::new("/dev/loop-control").exists(),
            rootfs_problems: image.problems(),
            vm_assets,
            image_dir: image.dir.clone(),
            firecracker,
            qemu,
            qemu_vsock,
            kvm: None,
        };
        if isolation != Isolation::Container {
            facts.kvm = facts.probe_kvm();
        }
        facts
    }

    fn probe_kvm(&self) -> Option<Verdict> {
        if let Some(why) = kvm::device_problem() {
            return Some(Verdict::Broken(why));
        }
        let (kernel, initrd) = self.vm_assets.as_ref().ok()?;
        if self.firecracker.is_none() && self.qemu_vsock.is_none() {
            // Nothing could run a job with KVM: do not spend a probe boot on it.
            return None;
        }
        // The probe boots with QEMU when it is there, else with Firecracker.
        let (vmm, binary) = match (&self.qemu, &self.firecracker) {
            (Some(q), _) => (Vmm::Qemu, q),
            (None, Some(f)) => (Vmm::Firecracker, f),
            (None, None) => return None,
        };
        Some(kvm::verdict(&kvm::Target { vmm, binary, kernel, initrd }))
    }
}

/// `/dev/vhost-vsock` when it opens read-write, else vhost-device-vsock when installed.
fn qemu_vsock() -> Option<VsockKind> {
    if std::fs::File::options().read(true).write(true).open("/dev/vhost-vsock").is_ok() {
        return Some(VsockKind::Kernel);
    }
    vm::find_program(qemu::VSOCK_DAEMON).map(|d| VsockKind::Hybrid { daemon: Some(d) })
}

/// Why the container sandbox cannot run, if it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoContainer {
    NotRoot,
    NoLoopDevices,
    Incomplete(Vec<String>),
}

impl NoContainer {
    pub fn check(root: bool, loop_control: bool, problems: &[String]) -> Option<NoContainer> {
        if !root {
            Some(NoContainer::NotRoot)
        } else if !loop_control {
            Some(NoContainer::NoLoopDevices)
        } else if !problems.is_empty() {
            Some(NoContainer::Incomplete(problems.to_vec()))
        } else {
            None
        }
    }

    /// A few words, for a reason that goes on to say what was chosen instead.
    pub fn short(&self) -> String {
        match self {
            NoContainer::NotRoot => "not root".into(),
            NoContainer::NoLoopDevices => "no loop devices (/dev/loop-control)".into(),
            NoContainer::Incomplete(p) => {
                format!("the worker image is incomplete: {}", p.join("; "))
            }
        }
    }

    /// The whole sentence, with what to do.
    pub fn message(&self) -> String {
        match self {
            NoContainer::NotRoot => "the container sandbox needs real root (loop devices, mounts, namespaces): run rootbox as root, or use --isolation vm where a VMM is available".into(),
            NoContainer::NoLoopDevices => "the container sandbox needs loop devices and /dev/loop-control is missing (modprobe loop)".into(),
            NoContainer::Incomplete(p) => format!(
                "the worker image is incomplete: {}; rebuild it with `make worker-image` (or `make image`)",
                p.join("; ")
            ),
        }
    }
}

/// Chooses the sandbox for `isolation` from `facts`; see the table at the top of this file.
pub fn decide(isolation: Isolation, facts: &Facts) -> Result<Decision, Unavailable> {
    let container = NoContainer::check(facts.root, facts.loop_control, &facts.rootfs_problems);
    match isolation {
        Isolation::Container => match container {
            None => Ok(Decision {
                plan: Plan::Container,
                reason: "asked for with --isolation container".into(),
            }),
            Some(why) => Err(Unavailable::new(why.message())),
        },
        Isolation::Vm => match (vm_with_kvm(facts), vm_with_tcg(facts)) {
            (Ok(p), _) => Ok(Decision {
                plan: Plan::Vm(p),
                reason: "asked for with --isolation vm; KVM works".into(),
            }),
            (Err(no_kvm), Ok(p)) => Ok(Decision {
                plan: Plan::Vm(p),
                reason: format!("asked for with --isolation vm; {no_kvm}; the CPU is emulated (TCG), slower than KVM or the container"),
            }),
            (Err(_), Err(why)) => {
                Err(Unavailable::new(format!("the microVM sandbox cannot run here: {why}")))
            }
        },
        Isolation::Auto => match (vm_with_kvm(facts), container, vm_with_tcg(facts)) {
            (Ok(p), _, _) => Ok(Decision {
                plan: Plan::Vm(p),
                reason: "KVM works: a probe boot reached the worker".into(),
            }),
            (Err(no_kvm), None, _) => Ok(Decision { plan: Plan::Container, reason: no_kvm }),
            (Err(no_kvm), Some(no_container), Ok(p)) => Ok(Decision {
                plan: Plan::Vm(p),
                reason: format!(
                    "the last resort: no container sandbox ({}) and {no_kvm}; the CPU is emulated (TCG), many times slower than the container",
                    no_container.short()
                ),
            }),
            (Err(_), Some(no_container), Err(no_vm)) => Err(Unavailable::new(format!(
                "no sandbox can run here: microVM: {no_vm}; container: {}",
                no_container.message()
            ))),
        },
    }
}

/// The microVM with KVM, or why not, in words that read after "container (".
fn vm_with_kvm(f: &Facts) -> Result<vm::Plan, String> {
    if let Some(Verdict::Broken(why)) = &f.kvm {
        return Err(format!("no usable KVM: {why}"));
    }
    let (kernel, initrd) = f.vm_assets.as_ref().map_err(|missing| {
        format!("no microVM kernel: the worker image has no {}", missing.join(" nor "))
    })?;
    if f.firecracker.is_none() && f.qemu.is_none() {
        return Err(no_vmm_message());
    }
    if f.firecracker.is_none() && f.qemu_vsock.is_none() {
        return Err(match f.kvm {
            Some(Verdict::Works) => format!("KVM works but {}", no_vsock_message()),
            _ => no_vsock_message(),
        });
    }
    if f.kvm.is_none() {
        return Err("KVM was not probed".into());
    }
    let plan = |vmm, binary: &PathBuf, vsock| vm::Plan {
        vmm,
        accel: Accel::Kvm,
        binary: binary.clone(),
        vsock,
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        kvm_note: None,
    };
    if let Some(fc) = &f.firecracker {
        return Ok(plan(Vmm::Firecracker, fc, VsockKind::Hybrid { daemon: None }));
    }
    match (&f.qemu, &f.qemu_vsock) {
        (Some(q), Some(v)) => Ok(plan(Vmm::Qemu, q, v.clone())),
        _ => Err(no_vsock_message()),
    }
}

/// QEMU with TCG, or why not, as the end of "the microVM sandbox cannot run here: ".
fn vm_with_tcg(f: &Facts) -> Result<vm::Plan, String> {
    let (kernel, initrd) = f.vm_assets.as_ref().map_err(|missing| {
        format!(
            "the worker image {} has no {}: {KERNEL_BUILD_HINT}",
            f.image_dir.display(),
            missing.join(" nor ")
        )
    })?;
    let Some(q) = &f.qemu else {
        return Err(match &f.firecracker {
            None => no_vmm_message(),
            Some(_) => format!(
                "{} is installed but KVM does not work here ({}), and {} (which runs without KVM) is not",
                firecracker::BINARY,
                kvm_note(f),
                qemu::BINARY
            ),
        });
    };
    let Some(vsock) = &f.qemu_vsock else { return Err(no_vsock_message()) };
    Ok(vm::Plan {
        vmm: Vmm::Qemu,
        accel: Accel::Tcg,
        binary: q.clone(),
        vsock: vsock.clone(),
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        kvm_note: Some(kvm_note(f)),
    })
}

fn kvm_note(f: &Facts) -> String {
    match &f.kvm {
        Some(Verdict::Broken(why)) => why.clone(),
        Some(Verdict::Works) => "KVM works, but no VMM here can use it".into(),
        None => "not probed".into(),
    }
}

fn no_vmm_message() -> String {
    format!(
        "no VMM: neither {} nor {} is installed (apt-get install qemu-system-x86)",
        firecracker::BINARY,
        qemu::BINARY
    )
}

fn no_vsock_message() -> String {
    format!(
        "QEMU needs {} for the VM's vsock (there is no usable /dev/vhost-vsock): install it with `make vsock-tool`",
        qemu::VSOCK_DAEMON
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One point of the probe space.
    #[derive(Debug, Clone, Copy)]
    struct Point {
        root: bool,
        loop_control: bool,
        rootfs_complete: bool,
        assets: bool,
        firecracker: bool,
        qemu: bool,
        /// 0: no backend, 1: /dev/vhost-vsock, 2: vhost-device-vsock.
        vsock: u8,
        /// 0: not probed, 1: works, 2: broken.
        kvm: u8,
    }

    const BROKEN: &str = "a probe boot with KVM failed: KVM internal error";

    impl Point {
        fn facts(self) -> Facts {
            Facts {
                root: self.root,
                loop_control: self.loop_control,
                rootfs_problems: if self.rootfs_complete {
                    vec![]
                } else {
                    vec!["/img lacks sbin/mke2fs".into()]
                },
                vm_assets: if self.assets {
                    Ok(("/img/vmlinux".into(), "/img/initramfs.cpio.gz".into()))
                } else {
                    Err(vec![vm::KERNEL_FILE, vm::INITRD_FILE])
                },
                image_dir: "/img".into(),
                firecracker: self.firecracker.then(|| "/usr/bin/firecracker".into()),
                qemu: self.qemu.then(|| "/usr/bin/qemu-system-x86_64".into()),
                qemu_vsock: match self.vsock {
                    0 => None,
                    1 => Some(VsockKind::Kernel),
                    _ => Some(VsockKind::Hybrid { daemon: Some("/bin/vhost-device-vsock".into()) }),
                },
                kvm: match self.kvm {
                    0 => None,
                    1 => Some(Verdict::Works),
                    _ => Some(Verdict::Broken(BROKEN.into())),
                },
            }
        }

        fn all() -> Vec<Point> {
            let b = [false, true];
            let mut out = Vec::new();
            for root in b {
                for loop_control in b {
                    for rootfs_complete in b {
                        for assets in b {
                            for firecracker in b {
                                for qemu in b {
                                    for vsock in 0..3 {
                                        for kvm in 0..3 {
                                            out.push(Point {
                                                root,
                                                loop_control,
                                                rootfs_complete,
                                                assets,
                                                firecracker,
                                                qemu,
                                                vsock,
                                                kvm,
                                            });
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            out
        }
    }

    /// What a run must get: the expectation, written as the table in the README, from the
    /// raw probe results (independently of the code under test).
    #[derive(Debug, PartialEq, Eq)]
    enum Want {
        Container,
        Vm(Vmm, Accel),
        Nothing,
    }

    fn want(isolation: Isolation, p: Point) -> Want {
        let container = p.root && p.loop_control && p.rootfs_complete;
        let kvm_vm = p.assets && p.kvm == 1 && (p.firecracker || (p.qemu && p.vsock != 0));
        let kvm_vmm = if p.firecracker { Vmm::Firecracker } else { Vmm::Qemu };
        let tcg_vm = p.assets && p.qemu && p.vsock != 0;
        match isolation {
            Isolation::Container if container => Want::Container,
            Isolation::Container => Want::Nothing,
            Isolation::Vm | Isolation::Auto if kvm_vm => Want::Vm(kvm_vmm, Accel::Kvm),
            Isolation::Auto if container => Want::Container,
            Isolation::Vm | Isolation::Auto if tcg_vm => Want::Vm(Vmm::Qemu, Accel::Tcg),
            Isolation::Vm | Isolation::Auto => Want::Nothing,
        }
    }

    fn got(d: &Result<Decision, Unavailable>) -> Want {
        match d {
            Ok(Decision { plan: Plan::Container, .. }) => Want::Container,
            Ok(Decision { plan: Plan::Vm(p), .. }) => Want::Vm(p.vmm, p.accel),
            Err(_) => Want::Nothing,
        }
    }

    #[test]
    fn every_probe_result_gets_the_table_s_answer() {
        let points = Point::all();
        assert_eq!(points.len(), 2 * 2 * 2 * 2 * 2 * 2 * 3 * 3);
        for isolation in [Isolation::Auto, Isolation::Container, Isolation::Vm] {
            for p in &points {
                let d = decide(isolation, &p.facts());
                assert_eq!(got(&d), want(isolation, *p), "{isolation:?} at {p:?}: {d:?}");
                let text = match &d {
                    Ok(d) => d.summary(),
                    Err(e) => e.why.clone(),
                };
                assert!(!text.is_empty() && !text.contains('\n'), "one line: {text:?}");
            }
        }
    }

    #[test]
    fn the_reasons_say_why() {
        for p in Point::all() {
            let f = p.facts();
            if let Ok(d) = decide(Isolation::Auto, &f) {
                match &d.plan {
                    Plan::Container if p.kvm == 2 => {
                        assert_eq!(d.reason, format!("no usable KVM: {BROKEN}"), "{p:?}")
                    }
                    Plan::Container if !p.assets => {
                        assert!(d.reason.starts_with("no microVM kernel"), "{p:?}: {}", d.reason)
                    }
                    Plan::Vm(v) if v.accel == Accel::Tcg => {
                        assert!(d.reason.starts_with("the last resort: "), "{p:?}: {}", d.reason);
                        assert!(d.reason.contains("TCG"), "{p:?}: {}", d.reason);
                    }
                    Plan::Vm(_) => assert!(d.reason.starts_with("KVM works"), "{}", d.reason),
                    Plan::Container => {}
                }
            }
            for (isolation, flag) in [(Isolation::Vm, "vm"), (Isolation::Container, "container")] {
                if let Ok(d) = decide(isolation, &f) {
                    let asked = format!("asked for with --isolation {flag}");
                    assert!(d.reason.starts_with(&asked), "{p:?}: {}", d.reason);
                }
            }
        }
    }

    #[test]
    fn this_machine_root_without_kvm_gets_the_container() {
        // What the development machines are: root, loops, a full image, QEMU and
        // vhost-device-vsock, and a nested KVM whose probe boot fails.
        let p = Point {
            root: true,
            loop_control: true,
            rootfs_complete: true,
            assets: true,
            firecracker: false,
            qemu: true,
            vsock: 2,
            kvm: 2,
        };
        let d = decide(Isolation::Auto, &p.facts()).expect("a sandbox");
        assert_eq!(d.summary(), format!("container (no usable KVM: {BROKEN})"));
        let d = decide(Isolation::Vm, &p.facts()).expect("a sandbox");
        assert!(
            d.summary().starts_with(
                "vm, qemu with tcg (asked for with --isolation vm; no usable KVM: a probe boot"
            ),
            "{}",
            d.summary()
        );
        let not_root = Point { root: false, ..p };
        let d = decide(Isolation::Auto, &not_root.facts()).expect("a sandbox");
        assert!(
            d.summary().starts_with("vm, qemu with tcg (the last resort: no container sandbox (not root) and no usable KVM"),
            "{}",
            d.summary()
        );
    }

    #[test]
    fn a_worker_image_without_kernel_says_what_builds_it() {
        let p = Point {
            root: true,
            loop_control: true,
            rootfs_complete: true,
            assets: false,
            firecracker: false,
            qemu: true,
            vsock: 2,
            kvm: 0,
        };
        let e = decide(Isolation::Vm, &p.facts()).expect_err("no kernel");
        assert_eq!(
            e.why,
            format!("the microVM sandbox cannot run here: the worker image /img has no vmlinux nor initramfs.cpio.gz: {KERNEL_BUILD_HINT}")
        );
        let d = decide(Isolation::Auto, &p.facts()).expect("the container");
        assert_eq!(
            d.summary(),
            "container (no microVM kernel: the worker image has no vmlinux nor initramfs.cpio.gz)"
        );
        let e = decide(Isolation::Auto, &Point { root: false, ..p }.facts()).expect_err("none");
        assert!(e.why.contains("make image") && e.why.contains("needs real root"), "{}", e.why);
    }

    #[test]
    fn container_reasons() {
        assert_eq!(NoContainer::check(true, true, &[]), None);
        assert_eq!(NoContainer::check(false, false, &["x".into()]), Some(NoContainer::NotRoot));
        assert_eq!(NoContainer::check(true, false, &[]), Some(NoContainer::NoLoopDevices));
        assert_eq!(
            NoContainer::check(true, true, &["x".into()]),
            Some(NoContainer::Incomplete(vec!["x".into()]))
        );
    }
}

//! Sandboxes the worker runs in. Each backend starts the worker with the output file and a
//! duplex byte stream carrying the protocol; the job driver does not care which one runs.

pub mod choice;
pub mod console;
pub mod container;
pub mod firecracker;
pub mod kvm;
pub mod machine;
pub mod qemu;
pub mod vm;
pub mod vmm;
pub mod vsock;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

pub use choice::Decision;

use crate::worker_image::WorkerImage;

/// Which sandbox was asked for (`--isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// The microVM when KVM works, else the container when root, else the microVM under TCG
    /// as the last resort (see `choice`).
    Auto,
    Container,
    Vm,
}

/// A sandbox cannot run here (exit code 5).
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub struct Unavailable {
    pub why: String,
    /// The failure behind `why`, when one (starting the container failed).
    #[source]
    pub source: Option<std::io::Error>,
}

impl Unavailable {
    pub fn new(why: impl Into<String>) -> Self {
        Self { why: why.into(), source: None }
    }
}

/// A started worker.
pub trait Running: Send {
    /// The protocol stream to the worker.
    fn transport(&self) -> std::io::Result<UnixStream>;
    /// Waits for the worker to exit after the job.
    fn wait(&mut self) -> std::io::Result<ExitStatus>;
    /// Stops the worker and everything it started, now.
    fn kill(&mut self);
    /// The last lines the worker printed (its console), for error reports.
    fn console_tail(&self) -> Vec<String>;
    /// The process group to kill from a signal handler.
    fn process_group(&self) -> Option<i32>;
    /// The host loop devices the worker attached to the output, as they are found (the
    /// container sandbox's), to give back from a signal handler.
    fn loop_devices(&self) -> Option<crate::loopdev::Found> {
        None
    }
    /// Milliseconds from the sandbox's start to the worker's connection, when measured.
    fn boot_ms(&self) -> Option<u64> {
        None
    }
    /// Why the sandbox ended before the job did, when rootbox knows (a VMM that died, a job
    /// timeout); asked after a failed job, for the error message.
    fn stop_reason(&self) -> Option<String> {
        None
    }
}

/// Which sandbox runs a job: chosen from `--isolation` and what this machine offers.
#[derive(Debug, Clone)]
pub enum Plan {
    Container,
    Vm(vm::Plan),
}

impl Plan {
    /// `"container"` or `"vm"`, as the `--json` report says.
    pub fn isolation(&self) -> &'static str {
        match self {
            Plan::Container => "container",
            Plan::Vm(_) => "vm",
        }
    }

    pub fn vmm(&self) -> Option<&'static str> {
        match self {
            Plan::Container => None,
            Plan::Vm(p) => Some(p.vmm.name()),
        }
    }

    pub fn accel(&self) -> Option<&'static str> {
        match self {
            Plan::Container => None,
            Plan::Vm(p) => Some(p.accel.name()),
        }
    }
}

/// What of the worker image `plan` runs: the container root, or the microVM's kernel and
/// initramfs (the initramfs is packed from that root).
pub fn worker_image_part(plan: &Plan) -> crate::worker_image::Part<'static> {
    match plan {
        Plan::Container => crate::worker_image::Part::Rootfs,
        Plan::Vm(_) => crate::worker_image::Part::Files(&[vm::KERNEL_FILE, vm::INITRD_FILE]),
    }
}

/// Probes this machine and decides (see choice.rs for the table): `vm`: Firecracker with
/// KVM, QEMU with KVM, QEMU with TCG; `container`: the namespace container; `auto`: the
/// microVM with KVM, else the container, else the microVM with TCG as the last resort.
pub fn choose(isolation: Isolation, image: &WorkerImage) -> Result<Decision, Unavailable> {
    choice::decide(isolation, &choice::Facts::probe(isolation, image))
}

/// Starts the chosen sandbox around `output`.
pub fn start(
    plan: &Plan,
    image: &WorkerImage,
    output: &File,
    opts: &vm::Options,
) -> anyhow::Result<Box<dyn Running>> {
    Ok(match plan {
        Plan::Container => Box::new(container::start(image, output)?),
        Plan::Vm(p) => Box::new(machine::start(p, output, opts)?),
    })
}

/// Keeps the last `max` lines of a stream, read by a background thread.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    /// Adds a stream's lines to the tail (several streams may share one: stdout and stderr).
    pub fn follow(&self, r: impl std::io::Read + Send + 'static, max: usize) {
        let t = self.clone();
        std::thread::spawn(move || {
            console::bounded_lines(r, |line| {
                let line = String::from_utf8_lossy(line);
                let line = rootbox_proto::text::printable(&line, false).into_owned();
                if std::env::var_os("ROOTBOX_DEBUG").is_some() {
                    eprintln!("worker: {line}");
                }
                if let Ok(mut q) = t.0.lock() {
                    if q.len() == max {
                        q.pop_front();
                    }
                    q.push_back(line);
                }
            });
        });
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }
}

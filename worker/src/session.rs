//! One job, host-driven: hello, job, mkfs, mount, apply (in a less privileged child), unmount,
//! shrink, check, result. Runs as PID 1 of the container or of the microVM.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::wait::{waitpid, WaitStatus};
use rootbox_proto::{
    Control, Hello, JobResult, JobSpec, Phase, ProtoError, Reader, RemoteError, Writer,
    PROTOCOL_VERSION,
};

use crate::apply::ops::Real;
use crate::apply::{Applier, ApplyError};
use crate::ext4;
use crate::stream::{stream_cause, LayerStream};
use crate::sys;

/// Where the image is mounted while layers are applied.
pub const TARGET: &str = "/target";
/// Exit code of the applier when it already reported its error to the host.
const REPORTED: i32 = 3;
/// Address-space bound of the applier: tar extension headers are read into memory.
const APPLIER_MEMORY: u64 = 1 << 30;

/// The block device the filesystem is built on.
pub enum Output {
    /// A file handed in by the host; attached to a loop device here (container sandbox).
    File(File),
    /// A device the VM exposes (virtio-blk).
    Device(PathBuf),
}

/// A failure with the structure the host prints.
#[derive(Debug)]
pub struct Failure(pub RemoteError);

impl Failure {
    pub fn new(operation: impl Into<String>, err: &(dyn std::error::Error + 'static)) -> Self {
        Self(RemoteError {
            operation: operation.into(),
            layer: None,
            path: None,
            causes: chain(err),
            internal: false,
        })
    }
}

pub fn chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    rootbox_proto::text::error_chain(err)
}

pub type Transport = File;

pub struct Session {
    rd: Reader<Transport>,
    wr: Writer<Transport>,
}

/// Outcome of `Session::run` for the caller (PID 1) to turn into an exit.
pub enum Outcome {
    Done,
    /// The error was sent to the host already.
    Reported,
    /// The transport itself failed; nothing could be reported.
    Lost(ProtoError),
}

impl Session {
    pub fn new(transport: Transport) -> std::io::Result<Self> {
        let rd = Reader::new(transport.try_clone()?);
        Ok(Self { rd, wr: Writer::new(transport) })
    }

    pub fn run(mut self, output: Output) -> Outcome {
        let job = match self.handshake() {
            Ok(job) => job,
            Err(e) => return Outcome::Lost(e),
        };
        match self.build(&job, output) {
            Ok(result) => match self.wr.send(&Control::Done(result)) {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Lost(e),
            },
            Err(None) => Outcome::Reported,
            Err(Some(Failure(remote))) => {
                send_failure(&mut self.wr, remote);
                Outcome::Reported
            }
        }
    }

    fn handshake(&mut self) -> Result<JobSpec, ProtoError> {
        let hello = match self.rd.read_control()? {
            Control::Hello(h) => h,
            other => {
                return Err(ProtoError::Unexpected { expected: "hello", got: format!("{other:?}") })
            }
        };
        self.wr.send(&Control::Hello(Hello {
            version: PROTOCOL_VERSION,
            features: vec!["loop".into(), "resize".into()],
        }))?;
        if hello.version != PROTOCOL_VERSION {
            return Err(ProtoError::Version { ours: PROTOCOL_VERSION, theirs: hello.version });
        }
        match self.rd.read_control()? {
            Control::Job(job) => Ok(job),
            other => Err(ProtoError::Unexpected { expected: "job", got: format!("{other:?}") }),
        }
    }

    fn progress(&mut self, phase: Phase) -> Result<(), Option<Failure>> {
        self.wr
            .send(&Control::Progress { phase, layer: None })
            .map_err(|e| Some(Failure::new("reporting progress", &e)))
    }

    /// `Err(None)`: already reported by the applier.
    fn build(&mut self, job: &JobSpec, output: Output) -> Result<JobResult, Option<Failure>> {
        let mut phase_ms = Vec::new();
        let mut t = Instant::now();
        let mut lap = |phase: Phase, t: &mut Instant| {
            phase_ms.push((phase, t.elapsed().as_millis() as u64));
            *t = Instant::now();
        };

        self.progress(Phase::Mkfs)?;
        let (_loop_dev, dev): (Option<sys::loopdev::LoopDevice>, PathBuf) = match &output {
            Output::File(f) => {
                let l = sys::loopdev::LoopDevice::attach(f, Path::new("/dev")).map_err(|e| {
                    Some(Failure::new("attaching the output file to a loop device", &e))
                })?;
                let p = l.path().to_path_buf();
                (Some(l), p)
            }
            Output::Device(p) => (None, p.clone()),
        };
        let device_bytes =
            device_size(&dev).map_err(|e| Some(Failure::new("sizing the output device", &e)))?;
        ext4::mkfs(&dev, job.label.as_deref(), job.content_hint)
            .map_err(|e| Some(Failure::new("creating the filesystem", &e)))?;
        let mount = sys::mounts::Mount::ext4(&dev, Path::new(TARGET))
            .map_err(|e| Some(Failure::new("mounting the new filesystem", &e)))?;
        let mut warnings = Vec::new();
        if let Err(e) = pack_allocations(&dev) {
            warnings.push(format!(
                "could not pack allocations (shrinking may be slower): {}",
                chain(&e).join(": ")
            ));
        }
        lap(Phase::Mkfs, &mut t);

        self.progress(Phase::Apply)?;
        let applied = self.apply_in_child(job)?;
        written_out(Path::new(TARGET)).map_err(Some)?;
        lap(Phase::Apply, &mut t);

        // Before shrinking (so what resize2fs moves lands on discarded space too): the blocks
        // of files a later layer deleted or replaced still hold their bytes; discard them.
        self.progress(Phase::Shrink)?;
        if let Err(e) = sys::trim::free_blocks(Path::new(TARGET)) {
            warnings.push(format!(
                "could not discard free blocks, so data later layers deleted may remain in \
                 the image's bytes: {e}"
            ));
        }

        mount.unmount().map_err(|e| Some(Failure::new("unmounting the filesystem", &e)))?;

        let min = ext4::converge_minimum(&dev, device_bytes, job.size)
            .map_err(|e| Some(Failure::new("shrinking the filesystem", &e)))?;
        let size = ext4::target_size(min, device_bytes, job.size)
            .map_err(|e| Some(Failure::new("sizing the filesystem", &e)))?;
        ext4::resize(&dev, size).map_err(|e| Some(Failure::new("resizing the filesystem", &e)))?;
        lap(Phase::Shrink, &mut t);

        self.progress(Phase::Fsck)?;
        ext4::check(&dev)
            .map_err(|e| Some(Failure::new("checking the filesystem (e2fsck -fn)", &e)))?;
        let usage =
            ext4::usage(&dev).map_err(|e| Some(Failure::new("reading filesystem usage", &e)))?;
        lap(Phase::Fsck, &mut t);
        rustix::fs::sync();

        Ok(JobResult {
            // resize2fs may leave off a last block group too small to hold its metadata; the
            // image file is still exactly the size asked for.
            size_bytes: size.max(usage.size_bytes),
            used_bytes: usage.used_bytes,
            inodes: usage.inodes_used,
            entries: applied.entries,
            warnings,
            os_release: applied.os_release,
            sanitised: applied.sanitised,
            phase_ms,
        })
    }

    /// Applies every layer in a forked child holding fewer capabilities and bounded memory.
    fn apply_in_child(&mut self, job: &JobSpec) -> Result<Applied, Option<Failure>> {
        let (tx, rx) = std::os::unix::net::UnixDatagram::pair()
            .map_err(|e| Some(Failure::new("creating a pipe", &e)))?;
        // Where the child's allocator notes an allocation its memory bound refused.
        let (note_rx, note_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Some(Failure::new("creating a pipe", &e)))?;
        let pid = sys::process::fork_run(|| {
            sys::alloc::note_failures_on(std::os::fd::AsRawFd::as_raw_fd(&note_tx));
            match applier_main(&mut self.rd, &mut self.wr, job) {
                Ok(applied) => {
                    let _ = tx.send(&serde_json::to_vec(&applied).unwrap_or_default());
                    0
                }
                Err(f) => {
                    send_failure(&mut self.wr, f.0);
                    REPORTED
                }
            }
        })
        .map_err(|e| Some(Failure::new("starting the layer applier", &e)))?;
        drop(tx);
        drop(note_tx);
        let status = loop {
            match waitpid(pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        let died = |cause: String, internal: bool| {
            Err(Some(Failure(RemoteError {
                operation: "applying layers".into(),
                layer: None,
                path: None,
                causes: vec![cause],
                internal,
            })))
        };
        match status {
            Ok(WaitStatus::Exited(_, 0)) => {
                let mut b = vec![0u8; 64 * 1024];
                let n = rx.recv(&mut b).unwrap_or(0);
                Ok(serde_json::from_slice(&b[..n]).unwrap_or_default())
            }
            Ok(WaitStatus::Exited(_, REPORTED)) => Err(None),
            Ok(WaitStatus::Signaled(_, sig, _)) => match (sig, refused_allocation(note_rx)) {
                (_, Some(size)) => died(
                    format!(
                        "the layer applier ran out of its {} MiB memory bound (an allocation \
                         of {size} bytes was refused)",
                        APPLIER_MEMORY >> 20
                    ),
                    false,
                ),
                (nix::sys::signal::Signal::SIGSYS, None) => died(
                    "the layer applier made a system call outside its seccomp allow-list and \
                     was killed (SIGSYS)"
                        .into(),
                    true,
                ),
                (sig, None) => died(format!("the layer applier was killed by {sig}"), true),
            },
            other => died(format!("the layer applier ended unexpectedly: {other:?}"), true),
        }
    }
}

/// Everything applied reached the device: data writes that failed there (a full disk under
/// the output file) surface only at writeback, as an error syncfs reports or as ext4
/// remounting itself read-only.
fn written_out(target: &Path) -> Result<(), Failure> {
    let why = "an I/O error writing the output device: is the disk holding the output full?";
    let fail = |e: std::io::Error| {
        Failure(RemoteError {
            operation: "writing the applied layers to the filesystem".into(),
            layer: None,
            path: None,
            causes: vec![e.to_string(), why.into()],
            internal: true,
        })
    };
    let dir = File::open(target).map_err(fail)?;
    rustix::fs::syncfs(&dir).map_err(|e| fail(e.into()))?;
    let st = rustix::fs::fstatvfs(&dir).map_err(|e| fail(e.into()))?;
    if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Err(fail(std::io::Error::from(rustix::io::Errno::ROFS)));
    }
    Ok(())
}

/// The size of the allocation the applier's memory bound refused, if its allocator said so.
fn refused_allocation(note: std::os::fd::OwnedFd) -> Option<u64> {
    let mut b = [0u8; 8];
    let mut f = File::from(note);
    use std::io::Read as _;
    f.read_exact(&mut b).ok().map(|()| u64::from_le_bytes(b))
}

/// Sends a failure, cut to fit a frame; if even that fails to fit, a minimal one.
fn send_failure(wr: &mut Writer<Transport>, remote: RemoteError) {
    let operation = remote.operation.clone();
    if let Err(ProtoError::TooLarge { .. }) = wr.send(&Control::Error(remote.bounded())) {
        let _ = wr.send(&Control::Error(RemoteError {
            operation: rootbox_proto::text::shortened(&operation, 256).into_owned(),
            layer: None,
            path: None,
            causes: vec!["the error did not fit a control frame".into()],
            internal: true,
        }));
    }
}

/// What the applier child tells its parent.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Applied {
    entries: u64,
    os_release: std::collections::BTreeMap<String, String>,
    sanitised: std::collections::BTreeMap<rootbox_proto::SanitisedKind, u64>,
}

/// The applier: reads `LayerBegin`/data/`LayerEnd` until `Finish`. Runs in the child.
fn applier_main(
    rd: &mut Reader<Transport>,
    wr: &mut Writer<Transport>,
    job: &JobSpec,
) -> Result<Applied, Failure> {
    sys::caps::restrict_to(sys::caps::APPLIER)
        .map_err(|e| Failure::new("dropping capabilities", &e))?;
    sys::caps::no_new_privs().map_err(|e| Failure::new("setting no_new_privs", &e))?;
    sys::process::limit_memory(APPLIER_MEMORY).map_err(|e| Failure::new("bounding memory", &e))?;
    rustix::process::umask(rustix::fs::Mode::empty());
    // Last: from here on only the calls the applier needs (see sys/seccomp.rs).
    let filter = sys::seccomp::applier().map_err(|e| Failure::new("building seccomp", &e))?;
    sys::seccomp::install(&filter).map_err(|e| Failure::new("installing seccomp", &e))?;

    let mut applier = Applier::new(Path::new(TARGET), job.limits, Real)
        .map_err(|e| Failure::new("opening the image root", &e))?;
    let total = job.layers.len();
    let mut budget = job.limits.max_total_bytes;
    loop {
        match rd.read_control() {
            Ok(Control::LayerBegin { index }) => {
                let i = index as usize;
                let injecting = i == total && job.inject;
                if i > total || (i == total && !job.inject) {
                    return Err(Failure::new(
                        "applying layers",
                        &ProtoError::Unexpected {
                            expected: "a layer of the job",
                            got: format!("layer index {index}"),
                        },
                    ));
                }
                let digest = if injecting {
                    applier.begin_injection();
                    None
                } else {
                    job.layers.get(i).map(|l| l.digest.clone())
                };
                let phase = if injecting { Phase::Inject } else { Phase::Apply };
                let _ = wr.send(&Control::Progress { phase, layer: Some(index) });
                let mut stream =
                    LayerStream::new(rd, index, &mut budget, job.limits.max_total_bytes);
                let res = applier
                    .apply_layer(index, &mut stream)
                    .map_err(LayerFailure::Apply)
                    .and_then(|()| stream.finish().map_err(LayerFailure::Stream));
                if let Err(e) = res {
                    return Err(layer_failure(e, i, total, digest));
                }
            }
            Ok(Control::Finish) => break,
            Ok(Control::Abort { reason }) => {
                return Err(Failure(RemoteError {
                    operation: "applying layers".into(),
                    layer: None,
                    path: None,
                    causes: vec![format!("aborted by the host: {reason}")],
                    internal: true,
                }))
            }
            Ok(other) => {
                return Err(Failure::new(
                    "applying layers",
                    &ProtoError::Unexpected {
                        expected: "layer_begin or finish",
                        got: format!("{other:?}"),
                    },
                ))
            }
            Err(e) => return Err(Failure::new("reading from the host", &e)),
        }
    }
    let os_release = applier.os_release();
    let entries = applier.finish().map_err(|e| Failure::new("setting directory times", &e))?;
    let report = std::mem::take(&mut applier.report);
    for record in report.records {
        let _ = wr.send(&Control::Sanitised(record));
    }
    Ok(Applied { entries, os_release, sanitised: report.counts })
}

enum LayerFailure {
    Apply(ApplyError),
    Stream(std::io::Error),
}

fn layer_failure(e: LayerFailure, i: usize, total: usize, digest: Option<String>) -> Failure {
    let operation = if i == total {
        "injecting files".to_string()
    } else {
        format!("applying layer {} of {}", i + 1, total)
    };
    // A stream error (limit, abort, digest) surfacing through the tar reader is reported as
    // itself rather than as a tar error.
    let io = match &e {
        LayerFailure::Apply(ApplyError::Read(io))
        | LayerFailure::Apply(ApplyError::Tar(rootbox_tar::Error::Io(io)))
        | LayerFailure::Stream(io) => Some(io),
        LayerFailure::Apply(_) => None,
    };
    if let Some(s) = io.and_then(stream_cause) {
        let internal = matches!(
            s,
            crate::stream::StreamError::Aborted(_) | crate::stream::StreamError::Proto(_)
        );
        return Failure(RemoteError {
            operation,
            layer: digest,
            path: None,
            causes: chain(s),
            internal,
        });
    }
    let (path, causes) = match &e {
        LayerFailure::Apply(a) => (a.path(), a.causes()),
        LayerFailure::Stream(io) => (None, chain(io)),
    };
    Failure(RemoteError { operation, layer: digest, path, causes, internal: false })
}

/// Makes ext4 allocate inodes (and so data) from the first block group on, instead of
/// spreading top-level directories across the whole scratch filesystem, so the final shrink
/// moves little or nothing. The knob is ext4's `inode_goal` in sysfs, mounted only for this
/// write and unmounted before any layer content is read.
fn pack_allocations(dev: &Path) -> Result<(), sys::SysError> {
    use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
    let name = dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let sysfs = Path::new("/sys");
    let mounted_here = !sysfs.join("fs").exists();
    if mounted_here {
        mount(
            c"sysfs",
            sysfs,
            c"sysfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"",
        )
        .map_err(|e| sys::SysError::new("mounting sysfs at", sysfs, e))?;
    }
    let knob = sysfs.join("fs/ext4").join(&name).join("inode_goal");
    // The first inode after the reserved ones and lost+found.
    let res = std::fs::write(&knob, "12").map_err(|e| sys::SysError::new("writing", &knob, e));
    if mounted_here {
        let _ = unmount(sysfs, UnmountFlags::DETACH);
    }
    res
}

fn device_size(dev: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(dev)?;
    f.seek(SeekFrom::End(0))
}

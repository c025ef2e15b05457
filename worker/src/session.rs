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

use crate::apply::data::Writes;
use crate::apply::{Applier, ApplyError};
use crate::ext4;
use crate::stream::{stream_cause, LayerStream};
use crate::sys;
use crate::sys::kernel::{Kernel, Loop as _, Mounted, Real};
use crate::tune;
use std::os::fd::AsFd as _;

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
        let built = build(&Real, &ext4::E2fsprogs, &mut self, &job, &output);
        // What the worker wrote reaches the microVM's disk before the host is told it is
        // done. In the container it is in the host's page cache of the output file once the
        // loop device is detached (its last close writes back what is dirty), and the host
        // fsyncs that file: a sync() there writes out every filesystem of the host's too
        // (8.5 ms at the end of a Debian build here, more with a busy disk).
        if matches!(output, Output::Device(_)) {
            rustix::fs::sync();
        }
        match built {
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
}

/// What the build sequence needs beyond the kernel and e2fsprogs: progress reports to the host
/// and the layer applier. The session is one; the tests' recorder is the other.
pub(crate) trait Steps {
    fn progress(&mut self, phase: Phase) -> Result<(), Option<Failure>>;
    /// Applies the job's layers to the filesystem mounted at [`TARGET`], file data written
    /// as `writes` says.
    fn apply(&mut self, job: &JobSpec, writes: Writes) -> Result<Applied, Option<Failure>>;
}

impl Steps for Session {
    fn progress(&mut self, phase: Phase) -> Result<(), Option<Failure>> {
        self.wr
            .send(&Control::Progress { phase, layer: None })
            .map_err(|e| Some(Failure::new("reporting progress", &e)))
    }

    fn apply(&mut self, job: &JobSpec, writes: Writes) -> Result<Applied, Option<Failure>> {
        self.apply_in_child(job, writes)
    }
}

/// The build: loop attach (for a file) → mkfs → mount → pack allocations → apply → sync →
/// trim → unmount → shrink → resize → check → usage. On an early return the guards release
/// what is held, in reverse: the mount (lazily) and then the loop device. `Err(None)`: the
/// applier reported its error already.
pub(crate) fn build<K: Kernel, T: ext4::Tools>(
    k: &K,
    tools: &T,
    steps: &mut impl Steps,
    job: &JobSpec,
    output: &Output,
) -> Result<JobResult, Option<Failure>> {
    let mut phase_ms = Vec::new();
    let mut t = Instant::now();
    let mut lap = |phase: Phase, t: &mut Instant| {
        phase_ms.push((phase, t.elapsed().as_millis() as u64));
        *t = Instant::now();
    };
    let target = Path::new(TARGET);

    steps.progress(Phase::Mkfs)?;
    let (loop_dev, dev): (Option<K::Loop>, PathBuf) = match output {
        Output::File(f) => {
            let l = k.loop_attach(f.as_fd(), Path::new("/dev")).map_err(|e| {
                Some(Failure::new("attaching the output file to a loop device", &e))
            })?;
            let p = l.path().to_path_buf();
            (Some(l), p)
        }
        Output::Device(p) => (None, p.clone()),
    };
    let device_bytes =
        k.device_size(&dev).map_err(|e| Some(Failure::new("sizing the output device", &e)))?;
    let identity = job.identity.as_ref();
    tools
        .mkfs(&dev, job.label.as_deref(), job.content_hint, identity)
        .map_err(|e| Some(Failure::new("creating the filesystem", &e)))?;
    if let Some(id) = identity {
        tools
            .stamp(&dev, id.epoch)
            .map_err(|e| Some(Failure::new("creating the filesystem", &e)))?;
    }
    let mount = Mounted::new(k, &sys::mounts::image(&dev, target))
        .map_err(|e| Some(Failure::new("mounting the new filesystem", &e)))?;
    let mut warnings = Vec::new();
    let _defaults = loop_dev.as_ref().map(|_| tune::LoopDefaults { k, dev: &dev });
    warnings.extend(tune::tune(k, &dev));
    lap(Phase::Mkfs, &mut t);

    if identity.is_some() {
        // Before the applier is forked: it inherits the CPU.
        // Builds running together hold different loop devices: pinning by the number
        // spreads them over the CPUs (a microVM's own disk builds alone).
        let spread = loop_dev.as_ref().map_or(0, |l| l.number() as usize);
        k.pin_to_one_cpu(spread)
            .map_err(|e| Some(Failure::new("preparing a reproducible build", &e)))?;
    }

    steps.progress(Phase::Apply)?;
    // Direct writes on the microVM's own disk only (see apply::data for why not a loop device).
    let writes = match output {
        Output::File(_) => Writes::Buffered,
        Output::Device(_) => Writes::Direct,
    };
    let applied = steps.apply(job, writes)?;
    written_out(k, target).map_err(Some)?;
    lap(Phase::Apply, &mut t);

    // Before shrinking (so what resize2fs moves lands on discarded space too): the blocks
    // of files a later layer deleted or replaced still hold their bytes; discard them.
    steps.progress(Phase::Shrink)?;
    if let Err(e) = k.trim(target) {
        warnings.push(format!(
            "could not discard free blocks, so data later layers deleted may remain in \
             the image's bytes: {}",
            chain(&e).join(": ")
        ));
    }

    mount.unmount().map_err(|e| Some(Failure::new("unmounting the filesystem", &e)))?;
    let canonicalise = identity.filter(|id| id.canonicalise);
    // Before resize2fs recomputes them: how far the kernel ever used each inode table, which
    // the canonicalising pass reads up to (deleted inodes included).
    let marks = match canonicalise {
        Some(_) => tools
            .inode_marks(&dev)
            .map_err(|e| Some(Failure::new("canonicalising the filesystem", &e)))?,
        None => Vec::new(),
    };

    let min =
        tools.minimum(&dev).map_err(|e| Some(Failure::new("shrinking the filesystem", &e)))?;
    let size = ext4::target_size(min.least, device_bytes, job.size)
        .map_err(|e| Some(Failure::new("sizing the filesystem", &e)))?;
    for step in ext4::shrink_steps(min, size) {
        tools.resize(&dev, step).map_err(|e| Some(Failure::new("resizing the filesystem", &e)))?;
    }
    lap(Phase::Shrink, &mut t);

    if let Some(id) = canonicalise {
        steps.progress(Phase::Canonicalise)?;
        tools
            .canonicalise(&dev, id.epoch, &marks)
            .map_err(|e| Some(Failure::new("canonicalising the filesystem", &e)))?;
        lap(Phase::Canonicalise, &mut t);
    }

    steps.progress(Phase::Fsck)?;
    tools
        .check(&dev)
        .map_err(|e| Some(Failure::new("checking the filesystem (e2fsck -fn)", &e)))?;
    let usage =
        tools.usage(&dev).map_err(|e| Some(Failure::new("reading filesystem usage", &e)))?;
    lap(Phase::Fsck, &mut t);

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

impl Session {
    /// Applies every layer in a forked child holding fewer capabilities and bounded memory.
    fn apply_in_child(
        &mut self,
        job: &JobSpec,
        writes: Writes,
    ) -> Result<Applied, Option<Failure>> {
        let (tx, rx) = std::os::unix::net::UnixDatagram::pair()
            .map_err(|e| Some(Failure::new("creating a pipe", &e)))?;
        // Where the child's allocator notes an allocation its memory bound refused.
        let (note_rx, note_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Some(Failure::new("creating a pipe", &e)))?;
        let pid = sys::process::fork_run(|| {
            sys::alloc::note_failures_on(std::os::fd::AsRawFd::as_raw_fd(&note_tx));
            match applier_main(&mut self.rd, &mut self.wr, job, writes) {
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
fn written_out(k: &impl Kernel, target: &Path) -> Result<(), Failure> {
    let why = "an I/O error writing the output device: is the disk holding the output full?";
    let fail = |causes: Vec<String>| {
        Failure(RemoteError {
            operation: "writing the applied layers to the filesystem".into(),
            layer: None,
            path: None,
            causes: causes.into_iter().chain([why.to_string()]).collect(),
            internal: true,
        })
    };
    match k.sync_filesystem(target) {
        Ok(true) => Ok(()),
        Ok(false) => Err(fail(vec![std::io::Error::from(rustix::io::Errno::ROFS).to_string()])),
        Err(e) => Err(fail(chain(&e))),
    }
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
pub(crate) struct Applied {
    entries: u64,
    os_release: std::collections::BTreeMap<String, String>,
    sanitised: std::collections::BTreeMap<rootbox_proto::SanitisedKind, u64>,
}

/// The applier: reads `LayerBegin`/data/`LayerEnd` until `Finish`. Runs in the child.
fn applier_main(
    rd: &mut Reader<Transport>,
    wr: &mut Writer<Transport>,
    job: &JobSpec,
    writes: Writes,
) -> Result<Applied, Failure> {
    // Before the capabilities go: what the applier holds open fits in 1024 files, the soft
    // limit a VM's PID 1 starts with and a common hard limit; raised to it when lower.
    sys::process::allow_open_files(crate::apply::OPEN_FILES).map_err(|e| {
        let what = format!(
            "raising the open file limit to {} (the applier holds removed entries open; allow \
             it with ulimit -n)",
            crate::apply::OPEN_FILES
        );
        Failure::new(what, &e)
    })?;
    sys::caps::restrict_to(sys::caps::APPLIER)
        .map_err(|e| Failure::new("dropping capabilities", &e))?;
    sys::caps::no_new_privs().map_err(|e| Failure::new("setting no_new_privs", &e))?;
    sys::process::limit_memory(APPLIER_MEMORY).map_err(|e| Failure::new("bounding memory", &e))?;
    rustix::process::umask(rustix::fs::Mode::empty());
    // Last: from here on only the calls the applier needs (see sys/seccomp.rs).
    let filter = sys::seccomp::applier().map_err(|e| Failure::new("building seccomp", &e))?;
    sys::seccomp::install(&filter).map_err(|e| Failure::new("installing seccomp", &e))?;

    let mut applier = Applier::new(Path::new(TARGET), job.limits, crate::apply::ops::Real)
        .map_err(|e| Failure::new("opening the image root", &e))?
        .with_writes(writes);
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
    let entries = applier.finish().map_err(|e| Failure::new("finishing the layers", &e))?;
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

#[cfg(test)]
mod tests {
    //! The build's privileged sequence, recorded: what runs, in which order, and what is
    //! released (the image's mount lazily, then the loop device) after each early error.

    use super::*;
    use crate::recorder::{Recorder, INJECTED};
    use rootbox_proto::{Limits, SizePolicy};

    fn job() -> JobSpec {
        JobSpec {
            image: "test".into(),
            layers: Vec::new(),
            size: SizePolicy::Auto { headroom_pct: 0 },
            limits: Limits::default(),
            label: None,
            content_hint: 0,
            inject: false,
            identity: None,
        }
    }

    /// Runs the build against `rec` with a file output (the container's loop device).
    fn run(rec: &Recorder, output: &Output) -> (Result<JobResult, Option<Failure>>, Vec<String>) {
        let mut steps = rec.clone();
        let r = build(rec, rec, &mut steps, &job(), output);
        (r, rec.calls())
    }

    fn file() -> Output {
        match File::open("/dev/null") {
            Ok(f) => Output::File(f),
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }

    const MKFS: &[&str] = &[
        "progress mkfs",
        "loop attach /dev/loop0",
        "size /dev/loop0",
        "mke2fs /dev/loop0",
        "mount /dev/loop0 on /target type ext4 (nosuid,nodev,noexec,noatime) data=writeback,noinit_itable,nodelalloc,nodioread_nolock,no_prefetch_block_bitmaps,nombcache",
        "write /sys/fs/ext4/loop0/inode_goal 12",
        "write /sys/block/loop0/bdi/max_bytes 33554432",
        "write /sys/block/loop0/bdi/strict_limit 1",
        "write /sys/block/loop0/queue/write_cache write through",
    ];
    const APPLY: &[&str] = &["progress apply", "apply layers (buffered writes)", "syncfs /target"];
    const SHRINK: &[&str] =
        &["progress shrink", "fitrim /target", "umount /target", "resize2fs -P /dev/loop0"];
    /// The minimum the recorder's resize2fs -P answers, in blocks, with no headroom.
    const RESIZE: &str = "resize2fs /dev/loop0 16384";
    const FSCK: &[&str] = &["progress fsck", "e2fsck -fn /dev/loop0", "read superblock /dev/loop0"];
    const DETACH: &str = "loop detach /dev/loop0";
    /// What the loop device's settings are put back to before it is detached.
    const RESTORE: &[&str] = &[
        "write /sys/block/loop0/queue/write_cache write back",
        "write /sys/block/loop0/bdi/strict_limit 0",
        "write /sys/block/loop0/bdi/max_ratio 100",
    ];

    fn seq(parts: &[&[&str]]) -> Vec<String> {
        parts.iter().flat_map(|p| p.iter().map(|s| s.to_string())).collect()
    }

    /// The failure's operation and causes, as the host prints them.
    fn failure(r: Result<JobResult, Option<Failure>>) -> String {
        match r {
            Ok(_) => panic!("the build succeeded"),
            Err(None) => panic!("the build says it reported the error itself"),
            Err(Some(Failure(e))) => format!("{}: {}", e.operation, e.causes.join(": ")),
        }
    }

    #[test]
    fn a_file_output_is_built_in_order_and_its_loop_device_detached_last() {
        let rec = Recorder::default();
        let (r, calls) = run(&rec, &file());
        let full = seq(&[MKFS, APPLY, SHRINK, &[RESIZE], FSCK, RESTORE, &[DETACH]]);
        assert_eq!(calls, full);
        let result = r.unwrap_or_else(|_| panic!("the build failed"));
        assert_eq!(result.size_bytes, 64 << 20);
        assert!(result.warnings.is_empty(), "{:?}", result.warnings);
    }

    fn reproducible(canonicalise: bool) -> JobSpec {
        JobSpec {
            identity: Some(rootbox_proto::Identity {
                uuid: "u".into(),
                hash_seed: "h".into(),
                epoch: 7,
                canonicalise,
            }),
            ..job()
        }
    }

    #[test]
    fn a_reproducible_build_fixes_times_pins_a_cpu_and_canonicalises_before_the_check() {
        for canonicalise in [true, false] {
            let rec = Recorder::default();
            let mut steps = rec.clone();
            let r = build(&rec, &rec, &mut steps, &reproducible(canonicalise), &file());
            assert!(r.is_ok());
            let mkfs: Vec<&str> = MKFS
                .iter()
                .map(|&c| if c == "mke2fs /dev/loop0" { "mke2fs -U u /dev/loop0" } else { c })
                .collect();
            let (made, mounted) = mkfs.split_at(4);
            let canon: &[&str] = if canonicalise {
                &["progress canonicalise", "canonicalise /dev/loop0 7"]
            } else {
                &[]
            };
            // The marks are read between the unmount and resize2fs, which rewrites them.
            let (unmounted, estimate) = SHRINK.split_at(3);
            let marks: &[&str] = if canonicalise { &["inode marks /dev/loop0"] } else { &[] };
            let want = seq(&[
                made,
                &["stamp /dev/loop0 7"],
                mounted,
                &["pin cpu 0"],
                APPLY,
                unmounted,
                marks,
                estimate,
                &[RESIZE],
                canon,
                FSCK,
                RESTORE,
                &[DETACH],
            ]);
            assert_eq!(rec.calls(), want, "canonicalise: {canonicalise}");
        }
    }

    #[test]
    fn a_failed_canonicalising_pass_fails_the_build_before_the_check() {
        let rec = Recorder::failing_at("canonicalise");
        let mut steps = rec.clone();
        let r = build(&rec, &rec, &mut steps, &reproducible(true), &file());
        assert!(failure(r).starts_with("canonicalising the filesystem: "));
        assert_eq!(rec.calls().last().map(String::as_str), Some(DETACH));
        assert!(!rec.calls().iter().any(|c| c.starts_with("e2fsck")));
    }

    #[test]
    fn a_reproducible_build_is_pinned_by_its_loop_device_number() {
        let rec = Recorder::default().with_loop(3);
        let mut steps = rec.clone();
        let r = build(&rec, &rec, &mut steps, &reproducible(true), &file());
        assert!(r.is_ok());
        let calls = rec.calls();
        assert!(calls.contains(&"loop attach /dev/loop3".to_string()), "{calls:#?}");
        assert!(calls.contains(&"pin cpu 3".to_string()), "{calls:#?}");
    }

    #[test]
    fn a_device_output_attaches_no_loop_device() {
        let rec = Recorder::default();
        let (r, calls) = run(&rec, &Output::Device(PathBuf::from("/dev/vdb")));
        assert!(r.is_ok());
        let expected: Vec<String> = seq(&[MKFS, APPLY, SHRINK, &[RESIZE], FSCK])
            .into_iter()
            .filter(|c| !c.starts_with("loop "))
            .map(|c| c.replace("loop0", "vdb").replace("buffered writes", "direct writes"))
            .collect();
        assert_eq!(calls, expected);
    }

    #[test]
    fn a_failed_loop_attach_stops_before_mkfs() {
        let rec = Recorder::failing_at("loop attach");
        let (r, calls) = run(&rec, &file());
        assert_eq!(calls, seq(&[&MKFS[..2]]));
        assert_eq!(
            failure(r),
            format!("attaching the output file to a loop device: LOOP_CONFIGURE on \"/dev/loop0\": {INJECTED}")
        );
    }

    #[test]
    fn a_failed_mkfs_detaches_the_loop_device() {
        let rec = Recorder::failing_at("mke2fs");
        let (r, calls) = run(&rec, &file());
        assert_eq!(calls, seq(&[&MKFS[..4], &[DETACH]]));
        assert_eq!(
            failure(r),
            format!("creating the filesystem: running /sbin/mke2fs: {INJECTED}")
        );
    }

    #[test]
    fn a_failed_mount_detaches_the_loop_device_and_unmounts_nothing() {
        let rec = Recorder::failing_at("mount /dev/loop0");
        let (r, calls) = run(&rec, &file());
        assert_eq!(calls, seq(&[&MKFS[..5], &[DETACH]]));
        assert!(failure(r).starts_with("mounting the new filesystem: "));
    }

    #[test]
    fn a_failed_apply_unmounts_lazily_then_detaches() {
        let rec = Recorder::failing_at("apply layers");
        let (r, calls) = run(&rec, &file());
        assert_eq!(calls, seq(&[MKFS, &APPLY[..2], RESTORE, &["umount -l /target", DETACH]]));
        assert_eq!(failure(r), format!("applying layers: {INJECTED}"));
    }

    #[test]
    fn a_failed_sync_is_a_full_disk_and_releases_the_mount() {
        let rec = Recorder::failing_at("syncfs");
        let (r, calls) = run(&rec, &file());
        assert_eq!(calls, seq(&[MKFS, APPLY, RESTORE, &["umount -l /target", DETACH]]));
        assert_eq!(
            failure(r),
            format!(
                "writing the applied layers to the filesystem: syncing \"/target\": {INJECTED}: \
                 an I/O error writing the output device: is the disk holding the output full?"
            )
        );
    }

    #[test]
    fn a_failed_unmount_falls_back_to_a_lazy_one() {
        let rec = Recorder::failing_at("umount /target");
        let (r, calls) = run(&rec, &file());
        assert_eq!(
            calls,
            seq(&[MKFS, APPLY, &SHRINK[..3], &["umount -l /target"], RESTORE, &[DETACH]])
        );
        assert!(failure(r).starts_with("unmounting the filesystem: "));
    }

    #[test]
    fn a_failed_resize_or_check_detaches_the_loop_device_only() {
        for (step, upto) in [(RESIZE, 1), ("e2fsck", 2)] {
            let rec = Recorder::failing_at(step);
            let (r, calls) = run(&rec, &file());
            let done: &[&str] = if upto == 1 { &[RESIZE] } else { &[RESIZE, FSCK[0], FSCK[1]] };
            assert_eq!(calls, seq(&[MKFS, APPLY, SHRINK, done, RESTORE, &[DETACH]]), "{step}");
            assert!(r.is_err(), "{step}");
        }
    }

    #[test]
    fn a_failed_trim_or_packing_is_a_warning_not_a_failure() {
        for step in [
            "fitrim",
            "write /sys/fs/ext4/loop0/inode_goal",
            "write /sys/block/loop0/bdi/max_bytes",
            "write /sys/block/loop0/queue/write_cache",
        ] {
            let rec = Recorder::failing_at(step);
            let (r, calls) = run(&rec, &file());
            // A failed max_bytes leaves strict_limit unset: it would bound nothing alone.
            let expected: Vec<String> =
                seq(&[MKFS, APPLY, SHRINK, &[RESIZE], FSCK, RESTORE, &[DETACH]])
                    .into_iter()
                    .filter(|c| !(step.ends_with("max_bytes") && c.ends_with("strict_limit 1")))
                    .collect();
            assert_eq!(calls, expected, "{step}");
            let result = r.unwrap_or_else(|_| panic!("{step}: the build failed"));
            assert_eq!(result.warnings.len(), 1, "{step}: {:?}", result.warnings);
            assert!(result.warnings[0].contains(INJECTED), "{:?}", result.warnings);
        }
    }

    #[test]
    fn sysfs_is_mounted_for_the_device_knobs_only_when_absent() {
        let rec = Recorder::default().without("/sys/fs");
        let (r, calls) = run(&rec, &file());
        assert!(r.is_ok());
        assert_eq!(
            calls[4..11],
            [
                MKFS[4],
                "mount sysfs on /sys type sysfs (nosuid,nodev,noexec)",
                MKFS[5],
                MKFS[6],
                MKFS[7],
                MKFS[8],
                "umount -l /sys",
            ]
        );
    }

    #[test]
    fn a_kernel_without_a_knob_skips_it_silently() {
        let rec = Recorder::default()
            .without("/sys/block/loop0/bdi/max_bytes")
            .without("/sys/block/loop0/queue/write_cache");
        let (r, calls) = run(&rec, &file());
        let result = r.unwrap_or_else(|_| panic!("the build failed"));
        assert!(result.warnings.is_empty(), "{:?}", result.warnings);
        let block: Vec<&str> =
            calls.iter().map(String::as_str).filter(|c| c.contains("/sys/block/")).collect();
        assert_eq!(block, RESTORE[1..], "{calls:?}");
    }
}

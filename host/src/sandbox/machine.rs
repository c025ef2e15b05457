//! One microVM, from boot to power-off: a private socket directory, the vsock listener
//! (before boot), the vsock daemon and the VMM in one process group (each killed by the kernel
//! if rootbox dies), the wait for the worker's connection under the boot timeout (one more
//! boot when the guest never started the worker), a watcher that turns the VMM's exit into
//! EOF for the job driver and enforces the job timeout, and cleanup on every path.

use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::console::{console_suffix, Console};
use super::vm::{cmdline, Options, Plan, Vmm, VsockKind, GUEST_CID};
use super::{qemu, vmm, vsock, Running};
use crate::{output, scratch, sys};

/// How long the guest may take to power off after the job.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How long the vsock daemon may take to open its vhost-user socket.
const DAEMON_PATIENCE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(10);

/// The output, opened twice above the descriptors QEMU inherits it at: read-write and
/// read-only (see qemu::OUTPUT_FDS).
struct OutputPair {
    read_write: OwnedFd,
    read_only: OwnedFd,
}

impl OutputPair {
    fn open(output: &File) -> io::Result<Self> {
        use nix::fcntl::{fcntl, FcntlArg};
        let above = qemu::OUTPUT_FDS.read_write.max(qemu::OUTPUT_FDS.read_only) + 1;
        let dup_above = |fd: i32| -> io::Result<OwnedFd> {
            sys::adopt(fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(above))?)
        };
        let read_write = dup_above(output.as_raw_fd())?;
        let ro = File::open(format!("/proc/self/fd/{}", output.as_raw_fd()))?;
        let read_only = dup_above(ro.as_raw_fd())?;
        Ok(Self { read_write, read_only })
    }
}

/// Spawns `cmd` in process group `pgid` (0: a new group it leads); the kernel kills it with
/// SIGKILL if the spawning thread of rootbox dies first.
pub fn spawn_in_group(cmd: &mut Command, pgid: i32) -> io::Result<Child> {
    cmd.process_group(pgid);
    sys::die_with_parent(cmd);
    cmd.spawn()
}

/// The VM could not be started, or never reached the worker.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("preparing the VM: {what}")]
    Setup {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("starting {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} did not open its vhost-user socket within {} s{}", DAEMON_PATIENCE.as_secs(), console_suffix(.console))]
    Daemon { program: String, console: Vec<String> },
    #[error("{vmm} cannot run the VM: {line}{}", console_suffix(.console))]
    Fatal { vmm: &'static str, line: String, console: Vec<String> },
    #[error("{vmm} exited ({status}) before the worker in the VM connected{}", console_suffix(.console))]
    Exited { vmm: &'static str, status: String, console: Vec<String> },
    #[error("boot timeout: the VM did not start the worker within {secs} s{} (raise it with --boot-timeout){}", if *.retried { ", on two boots" } else { "" }, console_suffix(.console))]
    NeverReached { secs: u64, retried: bool, console: Vec<String> },
    #[error("boot timeout: the worker in the VM started but did not connect to the host within {secs} s{}", console_suffix(.console))]
    NoConnect { secs: u64, console: Vec<String> },
}

/// The VMM and the vsock daemon of one VM, in one process group.
struct Procs {
    vmm: Child,
    daemon: Option<Child>,
    pgid: i32,
    status: Option<ExitStatus>,
}

impl Procs {
    /// The VMM's exit status, once it exited.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.vmm.try_wait().ok().flatten();
        }
        self.status
    }

    /// Kills the whole group and reaps both processes.
    fn kill(&mut self) {
        if self.poll().is_none() || self.daemon.is_some() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if self.status.is_none() {
            self.status = Some(self.vmm.wait().unwrap_or_else(|_| ExitStatus::from_raw(9)));
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// A host-side listener for the worker's connection.
enum Listener {
    Unix(UnixListener),
    Kernel(vsock::KernelListener, u32),
}

impl Listener {
    fn accept(&self) -> io::Result<Option<UnixStream>> {
        match self {
            Listener::Unix(l) => match l.accept() {
                Ok((s, _)) => Ok(Some(s)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            },
            Listener::Kernel(l, cid) => l.accept_from(*cid),
        }
    }
}

/// A boot in progress: whatever it started is stopped and removed on drop unless it became
/// a [`Vm`].
struct Attempt {
    dir: Option<scratch::Dir>,
    daemon: Option<Child>,
    procs: Option<Procs>,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(p) = &mut self.procs {
            p.kill();
        }
        if let Some(d) = &mut self.daemon {
            let _ = d.kill();
            let _ = d.wait();
        }
        if let Some(d) = self.dir.take() {
            let _ = d.close();
            output::track_cleanup_dir(None);
            output::track_process_group(None);
        }
    }
}

struct Failed {
    error: BootError,
    /// The guest never reached the worker: worth one more boot.
    retry: bool,
}

/// Boots a VM for one job around `output`; one more boot if the first never reached the
/// worker (e.g. the kernel hung early).
pub fn start(plan: &Plan, output: &File, opts: &Options) -> Result<Vm, BootError> {
    // The output may have no name (O_TMPFILE): a VMM that wants a path gets this process's
    // descriptor of it.
    let out = PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), output.as_raw_fd()));
    match boot(plan, &out, output, opts, None) {
        Ok(vm) => Ok(vm),
        Err(Failed { error, retry: true }) => {
            let text = error.to_string();
            let first =
                text.split("; the VM's last output:").next().unwrap_or_default().to_string();
            boot(plan, &out, output, opts, Some(&first)).map_err(|f| match f.error {
                BootError::NeverReached { secs, console, .. } => {
                    BootError::NeverReached { secs, retried: true, console }
                }
                other => other,
            })
        }
        Err(f) => Err(f.error),
    }
}

/// Where the per-VM socket directory goes: the temp dir, unless socket paths there would be
/// too long for sockaddr_un.
fn socket_base() -> PathBuf {
    let t = std::env::temp_dir();
    if t.as_os_str().len() <= 64 {
        t
    } else {
        PathBuf::from("/tmp")
    }
}

fn boot(
    plan: &Plan,
    out: &Path,
    output: &File,
    opts: &Options,
    earlier: Option<&str>,
) -> Result<Vm, Failed> {
    let fail = |error, retry| Failed { error, retry };
    let setup = |what: &str| {
        let what = what.to_string();
        move |source| Failed { error: BootError::Setup { what, source }, retry: false }
    };
    let dir = scratch::Dir::create(&socket_base(), ".vm")
        .map_err(setup("creating its socket directory"))?;
    output::track_cleanup_dir(Some(dir.path().to_path_buf()));
    let mut att = Attempt { dir: Some(dir), daemon: None, procs: None };
    let dir = att.dir.as_ref().map(|d| d.path().to_path_buf()).unwrap_or_default();
    let console = Console::default();
    if let Some(e) = earlier {
        console.note(&format!("the first boot failed ({e}); this is the second"));
    }

    let uds = dir.join("vm.vsock");
    let cid = match plan.vsock {
        // Kernel vsock CIDs are host-wide: pick one unlikely to be taken.
        VsockKind::Kernel => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            3 + (std::process::id().rotate_left(16) ^ nanos) % 0x7fff_0000
        }
        VsockKind::Hybrid { .. } => GUEST_CID,
    };
    let listener = match plan.vsock {
        VsockKind::Hybrid { .. } => Listener::Unix(
            vsock::listen_for_guest(&uds, vsock::WORKER_PORT)
                .map_err(setup("listening on its vsock socket"))?,
        ),
        VsockKind::Kernel => Listener::Kernel(
            vsock::KernelListener::bind().map_err(setup("listening on AF_VSOCK"))?,
            cid,
        ),
    };
    let port = match &listener {
        Listener::Unix(_) => vsock::WORKER_PORT,
        Listener::Kernel(l, _) => l.port,
    };

    let mut pgid = 0;
    let vhost = dir.join("vhost.sock");
    if let VsockKind::Hybrid { daemon: Some(bin) } = &plan.vsock {
        let mut cmd = qemu::daemon_command(bin, GUEST_CID, &vhost, &uds);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let program = bin.display().to_string();
        let mut child = spawn_in_group(&mut cmd, 0)
            .map_err(|source| fail(BootError::Spawn { program: program.clone(), source }, false))?;
        pgid = child.id() as i32;
        output::track_process_group(Some(pgid));
        console.follow_child(&mut child, "vhost-device-vsock: ");
        att.daemon = Some(child);
        let t = Instant::now();
        while !vhost.exists() {
            let exited = att.daemon.as_mut().is_some_and(|d| matches!(d.try_wait(), Ok(Some(_))));
            if exited || t.elapsed() > DAEMON_PATIENCE {
                std::thread::sleep(Duration::from_millis(50));
                return Err(fail(
                    BootError::Daemon { program, console: console.tail.lines() },
                    false,
                ));
            }
            std::thread::sleep(TICK);
        }
    }

    let cmdline = cmdline(Some(port));
    let guest = vmm::Guest {
        vmm: plan.vmm,
        binary: &plan.binary,
        accel: plan.accel,
        memory_mib: opts.memory_mib,
        kernel: &plan.kernel,
        initrd: &plan.initrd,
        cmdline: &cmdline,
        output: Some(out),
        vsock: match plan.vsock {
            VsockKind::Hybrid { .. } => vmm::Vsock::Hybrid { uds: &uds, vhost: &vhost },
            VsockKind::Kernel => vmm::Vsock::Kernel { cid },
        },
    };
    let mut cmd = vmm::command(&guest, &dir).map_err(setup("writing the VMM's configuration"))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Open for this boot only, and closed here once QEMU has its copies: nothing of a first,
    // failed boot stays open into the second.
    let out_fds = match plan.vmm {
        Vmm::Qemu => Some(OutputPair::open(output).map_err(|source| {
            fail(
                BootError::Setup {
                    what: format!("opening the output file ({}) for QEMU", out.display()),
                    source,
                },
                false,
            )
        })?),
        Vmm::Firecracker => None,
    };
    if let Some(out_fds) = &out_fds {
        sys::pass_fds(
            &mut cmd,
            vec![
                (out_fds.read_write.as_raw_fd(), qemu::OUTPUT_FDS.read_write),
                (out_fds.read_only.as_raw_fd(), qemu::OUTPUT_FDS.read_only),
            ],
        );
    }
    let mut vmm = spawn_in_group(&mut cmd, pgid).map_err(|source| {
        fail(BootError::Spawn { program: plan.binary.display().to_string(), source }, false)
    })?;
    drop(out_fds);
    if pgid == 0 {
        pgid = vmm.id() as i32;
    }
    output::track_process_group(Some(pgid));
    console.follow_child(&mut vmm, "");
    att.procs = Some(Procs { vmm, daemon: att.daemon.take(), pgid, status: None });

    let started = Instant::now();
    let name = plan.vmm.name();
    let stream = loop {
        if let Some(s) = listener.accept().map_err(setup("accepting the worker's connection"))? {
            break s;
        }
        let m = console.marks();
        if let Some(line) = m.fatal {
            return Err(fail(
                BootError::Fatal { vmm: name, line, console: console.tail.lines() },
                false,
            ));
        }
        if let Some(status) = att.procs.as_mut().and_then(Procs::poll) {
            std::thread::sleep(Duration::from_millis(100));
            let m = console.marks();
            let error = BootError::Exited {
                vmm: name,
                status: status.to_string(),
                console: console.tail.lines(),
            };
            return Err(fail(error, !m.init));
        }
        if started.elapsed() > opts.boot_timeout {
            let secs = opts.boot_timeout.as_secs();
            console.note(&format!("boot timeout after {secs} s: stopping the VM"));
            let lines = console.tail.lines();
            return Err(if m.init {
                fail(BootError::NoConnect { secs, console: lines }, false)
            } else {
                fail(BootError::NeverReached { secs, retried: false, console: lines }, true)
            });
        }
        std::thread::sleep(TICK);
    };
    let boot_ms = started.elapsed().as_millis() as u64;
    drop(listener);
    let _ = std::fs::remove_file(vsock::guest_port_path(&uds, vsock::WORKER_PORT));
    stream.set_nonblocking(false).map_err(setup("configuring the worker's connection"))?;
    console.note(&format!("the worker connected {boot_ms} ms after {name} started"));

    let procs = att.procs.take().ok_or_else(|| {
        fail(
            BootError::Setup {
                what: "lost the VMM".into(),
                source: io::Error::other("no process"),
            },
            false,
        )
    })?;
    let shared = Arc::new(Shared {
        procs: Mutex::new(procs),
        console,
        stop: AtomicBool::new(false),
        vmm: name,
        exit_noted: AtomicBool::new(false),
    });
    let watched = stream.try_clone().map_err(setup("cloning the worker's connection"))?;
    let w = shared.clone();
    let watcher = std::thread::spawn(move || watch(&w, &watched));
    Ok(Vm { shared, stream, watcher: Some(watcher), dir: att.dir.take(), pgid, boot_ms })
}

struct Shared {
    procs: Mutex<Procs>,
    console: Console,
    stop: AtomicBool,
    vmm: &'static str,
    exit_noted: AtomicBool,
}

impl Shared {
    /// Puts the VMM's exit in the console tail, once.
    fn note_exit(&self, status: ExitStatus) {
        if !self.exit_noted.swap(true, Ordering::SeqCst) {
            self.console.note(&format!("{} exited ({status})", self.vmm));
        }
    }
}

/// Until stopped: when the VMM exits, shut the connection down so the job driver sees it at
/// once. (The job timeout is the job driver's, for every sandbox: see job.rs.)
fn watch(shared: &Shared, stream: &UnixStream) {
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok(mut p) = shared.procs.lock() else { return };
        if let Some(status) = p.poll() {
            drop(p);
            shared.note_exit(status);
            // Anything the worker sent before the end is still read; then EOF.
            std::thread::sleep(Duration::from_millis(100));
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        drop(p);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running VM with the worker connected.
pub struct Vm {
    shared: Arc<Shared>,
    stream: UnixStream,
    watcher: Option<JoinHandle<()>>,
    dir: Option<scratch::Dir>,
    pgid: i32,
    /// From the VMM's start to the worker's connection.
    pub boot_ms: u64,
}

impl Vm {
    /// Stops everything and removes the socket directory; idempotent.
    fn cleanup(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        if let Ok(mut p) = self.shared.procs.lock() {
            p.kill();
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(d) = self.dir.take() {
            let _ = d.close();
            output::track_cleanup_dir(None);
            output::track_process_group(None);
        }
    }
}

impl Running for Vm {
    fn transport(&self) -> io::Result<UnixStream> {
        self.stream.try_clone()
    }

    /// Waits for the guest to power off after the job (killing it after a grace period).
    fn wait(&mut self) -> io::Result<ExitStatus> {
        // The job is over: closing our side lets the worker know its last message arrived
        // (it waits for this before powering off, see worker/src/sys/vsock.rs `linger`).
        let _ = self.stream.shutdown(Shutdown::Both);
        let start = Instant::now();
        let status = loop {
            let mut p =
                self.shared.procs.lock().map_err(|_| io::Error::other("VM state poisoned"))?;
            if let Some(s) = p.poll() {
                break s;
            }
            if start.elapsed() > SHUTDOWN_GRACE {
                self.shared.console.note("the VM did not power off after the job: killing it");
                p.kill();
                break p.status.unwrap_or_else(|| ExitStatus::from_raw(9));
            }
            drop(p);
            std::thread::sleep(Duration::from_millis(20));
        };
        self.cleanup();
        Ok(status)
    }

    fn kill(&mut self) {
        self.cleanup();
    }

    /// Asked when the worker went away: give a dying VMM a moment, so its exit is in the tail.
    fn console_tail(&self) -> Vec<String> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            match self.shared.procs.lock().map(|mut p| p.poll()) {
                Ok(Some(status)) => {
                    self.shared.note_exit(status);
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        self.shared.console.tail.lines()
    }

    fn process_group(&self) -> Option<i32> {
        Some(self.pgid)
    }

    fn boot_ms(&self) -> Option<u64> {
        Some(self.boot_ms)
    }

    fn stop_reason(&self) -> Option<String> {
        let status = self.shared.procs.lock().ok().and_then(|mut p| p.poll())?;
        Some(format!("{} exited ({status}) before the job ended", self.shared.vmm))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.cleanup();
    }
}

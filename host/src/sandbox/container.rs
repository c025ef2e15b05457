//! The namespace container: the worker as PID 1 of new mount, PID, network, IPC, UTS and
//! cgroup namespaces, rooted (pivot_root) in the worker image, with only the output file and
//! one end of a socketpair inherited. The worker's `container-init` stage does the mounts;
//! this side only unshares and hands over descriptors.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::CloneFlags;

use super::choice::NoContainer;
use super::{Running, Tail, Unavailable};
use crate::loopdev::{Backing, Found};
use crate::worker_image::WorkerImage;

/// Descriptor numbers the worker receives.
const PROTO_FD: i32 = 3;
const OUTPUT_FD: i32 = 4;

/// Why the container sandbox cannot run here, if it cannot (the words `choice` uses too).
pub fn unavailable(image: &WorkerImage) -> Option<String> {
    let root = nix::unistd::geteuid().is_root();
    let loop_control = std::path::Path::new("/dev/loop-control").exists();
    NoContainer::check(root, loop_control, &image.problems()).map(|why| why.message())
}

pub struct Container {
    child: Child,
    host_end: UnixStream,
    tail: Tail,
    loops: LoopWatch,
}

/// Watches, from the start, for the host loop device the worker attaches to the output, so
/// that it is given back with the kernel's settings however the sandbox ends
/// (`crate::loopdev`): the worker attaches it within milliseconds, and a killed worker's is
/// detached before anyone could look.
struct LoopWatch {
    found: Option<Found>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often [`LoopWatch`] looks until it has found the device.
const LOOK_EVERY: Duration = Duration::from_millis(10);

impl LoopWatch {
    fn start(output: &File) -> LoopWatch {
        let stop = Arc::new(AtomicBool::new(false));
        // Without the output's identity nothing could be matched: nothing is watched.
        let Ok(backing) = Backing::of(output) else {
            return LoopWatch { found: None, stop, thread: None };
        };
        let found = Found::new(backing);
        let (f, halt) = (found.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("loop-watch".into())
            .spawn(move || {
                while !halt.load(Ordering::SeqCst) && !f.look() {
                    std::thread::sleep(LOOK_EVERY);
                }
            })
            .ok();
        LoopWatch { found: Some(found), stop, thread }
    }

    /// Stops watching, ends the sandbox with `kill` and gives the device back: once (`wait`
    /// or `kill`, then `kill` again on drop, which finds nothing left to give back).
    fn end(&mut self, kill: impl FnOnce()) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        crate::loopdev::end_giving_back(self.found.take().as_ref(), kill);
    }
}

/// How many layer bytes may be in flight to the worker: the host decompresses this far ahead
/// while the worker is held up in a slow write, and the worker then reads on while the host
/// catches up. With the default (212,992 bytes on Debian) the two sides took turns: measured
/// on Debian minbase, alternated, job 2.08-2.50 s with it, 1.86-2.02 s with 4 MiB.
const IN_FLIGHT: usize = 4 << 20;

/// Sets the send buffer of the host's end to [`IN_FLIGHT`]: forced past `net.core.wmem_max`
/// (rootbox runs as root), else as far as that allows. Only speed depends on it.
fn widen(host_end: &UnixStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(host_end, sockopt::SndBufForce, &IN_FLIGHT).is_err() {
        let _ = setsockopt(host_end, sockopt::SndBuf, &IN_FLIGHT);
    }
}

/// Starts the worker in a fresh container around `output`.
pub fn start(image: &WorkerImage, output: &File) -> Result<Container, Unavailable> {
    if let Some(why) = unavailable(image) {
        return Err(Unavailable::new(why));
    }
    let failed = |why: String| move |e| Unavailable { why, source: Some(e) };
    let (host_end, worker_end) = UnixStream::pair().map_err(failed("socketpair".into()))?;
    widen(&host_end);
    let sfd = worker_end.as_raw_fd();
    let ofd = output.as_raw_fd();
    let rootfs = image.rootfs();
    let mut cmd = Command::new(image.worker());
    cmd.arg("container-init")
        .arg("--root")
        .arg(&rootfs)
        .args(["--", "session", "--proto-fd", "3", "--output-fd", "4"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    crate::sys::enter_namespaces(
        &mut cmd,
        vec![(sfd, PROTO_FD), (ofd, OUTPUT_FD)],
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    );
    let mut child =
        cmd.spawn().map_err(failed(format!("starting {}", image.worker().display())))?;
    drop(worker_end);
    let tail = Tail::default();
    if let Some(err) = child.stderr.take() {
        tail.follow(err, 40);
    }
    if let Some(out) = child.stdout.take() {
        tail.follow(out, 40);
    }
    let loops = LoopWatch::start(output);
    Ok(Container { child, host_end, tail, loops })
}

impl Running for Container {
    fn transport(&self) -> std::io::Result<UnixStream> {
        self.host_end.try_clone()
    }

    fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait();
        self.loops.end(|| {});
        status
    }

    fn kill(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        let child = &mut self.child;
        self.loops.end(|| {
            if running {
                let pg = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
            }
        });
    }

    fn console_tail(&self) -> Vec<String> {
        self.tail.lines()
    }

    fn process_group(&self) -> Option<i32> {
        Some(self.child.id() as i32)
    }

    fn loop_devices(&self) -> Option<Found> {
        self.loops.found.clone()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_end_holds_the_bytes_in_flight() {
        use nix::sys::socket::{getsockopt, sockopt};
        let (host_end, _worker_end) = UnixStream::pair().expect("socketpair");
        widen(&host_end);
        let got = getsockopt(&host_end, sockopt::SndBuf).expect("SO_SNDBUF");
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // The kernel reports twice what was set (its bookkeeping overhead).
        let want = if nix::unistd::geteuid().is_root() { IN_FLIGHT } else { IN_FLIGHT.min(max) };
        assert!(got >= want, "SO_SNDBUF {got}, want at least {want}");
    }
}

//! The namespace container: the worker as PID 1 of new mount, PID, network, IPC, UTS and
//! cgroup namespaces, rooted (pivot_root) in the worker image, with only the output file and
//! one end of a socketpair inherited. The worker's `container-init` stage does the mounts;
//! this side only unshares and hands over descriptors.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::sched::CloneFlags;

use super::choice::NoContainer;
use super::{Running, Tail, Unavailable};
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
}

/// Starts the worker in a fresh container around `output`.
pub fn start(image: &WorkerImage, output: &File) -> Result<Container, Unavailable> {
    if let Some(why) = unavailable(image) {
        return Err(Unavailable::new(why));
    }
    let failed = |why: String| move |e| Unavailable { why, source: Some(e) };
    let (host_end, worker_end) = UnixStream::pair().map_err(failed("socketpair".into()))?;
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
    Ok(Container { child, host_end, tail })
}

impl Running for Container {
    fn transport(&self) -> std::io::Result<UnixStream> {
        self.host_end.try_clone()
    }

    fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait()
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pg = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }

    fn console_tail(&self) -> Vec<String> {
        self.tail.lines()
    }

    fn process_group(&self) -> Option<i32> {
        Some(self.child.id() as i32)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
    }
}

//! The worker as PID 1 of the microVM (`/init` of the initramfs is a symlink to the worker).
//!
//! It mounts the pseudo filesystems, reads its parameters from the kernel command line,
//! connects to the host over AF_VSOCK and runs the same session as the container sandbox, in
//! a forked child, building the ext4 straight on the virtio-blk device. PID 1 itself only
//! reaps (the session's children and any orphan), samples guest memory, and on every exit
//! path (success, error, panic) syncs and powers the VM off. It never unwinds and never
//! returns to the kernel.
//!
//! Console markers (the host matches them as substrings; see host/src/sandbox/vm.rs):
//! [`INIT_MARKER`] when PID 1 starts, [`READY_MARKER`] once the host connection is up,
//! [`PROBE_MARKER`] for a KVM probe boot (`rootbox.probe=1`), which does nothing else.

use std::ffi::CStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rustix::mount::{mount, MountFlags};

use crate::session::{self, Outcome, Output, Session};
use crate::sys::{self, SysError};

pub const INIT_MARKER: &str = "rootbox-worker: vm init";
pub const READY_MARKER: &str = "rootbox-worker: vm ready";
pub const PROBE_MARKER: &str = "rootbox-worker: vm probe ok";

/// How long the worker keeps trying to reach the host (the host listens before boot; the
/// wait covers a transport still probing and a slow host).
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// How long PID 1 waits, after the session, for the host to close the connection.
const LINGER_PATIENCE: Duration = Duration::from_secs(5);
/// How long the output device may take to appear in /dev.
const DEVICE_PATIENCE: Duration = Duration::from_secs(5);
/// How often PID 1 looks for exited children and samples memory.
const TICK: Duration = Duration::from_millis(100);

const NOSUID_NODEV_NOEXEC: MountFlags =
    MountFlags::NOSUID.union(MountFlags::NODEV).union(MountFlags::NOEXEC);

/// The init mounts, in order: (source, target, type, flags, data).
const MOUNTS: &[(&CStr, &str, &CStr, MountFlags, &CStr)] = &[
    (c"proc", "/proc", c"proc", NOSUID_NODEV_NOEXEC, c""),
    (c"sysfs", "/sys", c"sysfs", NOSUID_NODEV_NOEXEC, c""),
    (c"devtmpfs", "/dev", c"devtmpfs", MountFlags::NOSUID.union(MountFlags::NOEXEC), c"mode=0755"),
    (
        c"tmpfs",
        "/tmp",
        c"tmpfs",
        MountFlags::NOSUID.union(MountFlags::NODEV),
        c"mode=1777,size=64m",
    ),
];

/// True when this process should act as the VM's init: PID 1, started as `.../init`.
pub fn is_init(argv0: &str) -> bool {
    std::process::id() == 1 && argv0.ends_with("init")
}

/// Parameters from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `rootbox.port=N`: the host's vsock port.
    pub port: u32,
    /// `rootbox.output=/dev/vdX`: the block device to build on.
    pub output: PathBuf,
    /// `rootbox.probe=1`: boot, print [`PROBE_MARKER`], power off.
    pub probe: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("kernel command line: {key}={value:?} is not valid: {why}")]
    Invalid { key: &'static str, value: String, why: &'static str },
    #[error("kernel command line: {0} is missing")]
    Missing(&'static str),
}

impl Params {
    /// Parses `/proc/cmdline`; the last occurrence of a key wins, unknown words are ignored.
    pub fn parse(cmdline: &str) -> Result<Params, ParamError> {
        let (mut port, mut output, mut probe) = (None, None, false);
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else { continue };
            match key {
                "rootbox.port" => {
                    let p = value.parse::<u32>().map_err(|_| ParamError::Invalid {
                        key: "rootbox.port",
                        value: value.into(),
                        why: "not a port number",
                    })?;
                    port = Some(p);
                }
                "rootbox.output" => {
                    if !value.starts_with("/dev/") || value.contains("/../") {
                        return Err(ParamError::Invalid {
                            key: "rootbox.output",
                            value: value.into(),
                            why: "not a device under /dev",
                        });
                    }
                    output = Some(PathBuf::from(value));
                }
                "rootbox.probe" => probe = value == "1",
                _ => {}
            }
        }
        if probe {
            return Ok(Params {
                port: port.unwrap_or(0),
                output: output.unwrap_or_default(),
                probe,
            });
        }
        Ok(Params {
            port: port.ok_or(ParamError::Missing("rootbox.port"))?,
            output: output.ok_or(ParamError::Missing("rootbox.output"))?,
            probe,
        })
    }
}

/// PID 1's failures, each naming what it touched.
#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Params(#[from] ParamError),
    #[error("the output device {0:?} did not appear within {1:?}")]
    NoDevice(PathBuf, Duration),
    #[error("the session ended with {0}")]
    Session(String),
}

/// Runs as the VM's init; never returns.
pub fn main() -> ! {
    install_panic_hook();
    println!("{INIT_MARKER}");
    if let Err(e) = run() {
        eprintln!("rootbox-worker: vm init: {}", session::chain(&e).join(": "));
    }
    sys::process::power_off()
}

/// Syncs and powers off from a panic in PID 1; a panicking child (the session or its
/// applier) only says so and exits, and PID 1 then powers off. Nothing unwinds.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("rootbox-worker: panic: {info}");
        if std::process::id() == 1 {
            sys::process::power_off()
        }
        std::process::exit(101)
    }));
}

fn run() -> Result<(), InitError> {
    for (source, target, fstype, flags, data) in MOUNTS {
        mount(*source, *target, *fstype, *flags, *data)
            .map_err(|e| SysError::new("mounting", *target, e))?;
    }
    sys::mounts::proc_read_only(&sys::kernel::Real, Path::new("/proc"))?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| SysError::new("reading", "/proc/cmdline", e))?;
    let params = Params::parse(&cmdline)?;
    if params.probe {
        println!("{PROBE_MARKER}");
        return Ok(());
    }
    wait_for(&params.output)?;
    let fd = sys::vsock::connect(sys::vsock::HOST_CID, params.port, CONNECT_PATIENCE)?;
    println!("{READY_MARKER}");
    std::env::set_var("PATH", "/sbin:/bin");

    // PID 1 keeps a copy of the connection, to end it cleanly after the session (linger).
    let keep =
        fd.try_clone().map_err(|e| SysError::new("duplicating", "the vsock connection", e))?;
    let transport = File::from(fd);
    let output = params.output.clone();
    let child = sys::process::fork_run(move || session_main(transport, output))
        .map_err(|e| SysError::new("forking the session in", "/", e))?;
    let (status, memory) = reap_until(child);
    println!("rootbox-worker: memory: {memory}");
    if let Err(e) = sys::vsock::linger(&keep, LINGER_PATIENCE) {
        eprintln!("rootbox-worker: {}", session::chain(&e).join(": "));
    }
    match status {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => Err(InitError::Session(describe(other))),
    }
}

/// The session, in the forked child: same capability bound as in the container.
fn session_main(transport: File, output: PathBuf) -> i32 {
    if let Err(e) = sys::caps::restrict_to(sys::caps::SESSION) {
        eprintln!("rootbox-worker: bounding capabilities: {e}");
        return 125;
    }
    if let Err(e) = sys::caps::no_new_privs() {
        eprintln!("rootbox-worker: setting no_new_privs: {e}");
        return 125;
    }
    let session = match Session::new(transport) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rootbox-worker: {e}");
            return 1;
        }
    };
    match session.run(Output::Device(output)) {
        Outcome::Done => 0,
        Outcome::Reported => 1,
        Outcome::Lost(e) => {
            eprintln!("rootbox-worker: lost the host: {}", session::chain(&e).join(": "));
            1
        }
    }
}

fn wait_for(dev: &Path) -> Result<(), InitError> {
    let start = Instant::now();
    while !dev.exists() {
        if start.elapsed() > DEVICE_PATIENCE {
            return Err(InitError::NoDevice(dev.to_path_buf(), DEVICE_PATIENCE));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Reaps every child (and orphan) until `session` exits; samples memory meanwhile.
fn reap_until(session: Pid) -> (WaitStatus, Memory) {
    let mut memory = Memory::default();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                memory.sample();
                std::thread::sleep(TICK);
            }
            Ok(s @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                if pid == session =>
            {
                memory.sample();
                return (s, memory);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                eprintln!("rootbox-worker: waiting for children: {e}");
                return (WaitStatus::StillAlive, memory);
            }
        }
    }
}

fn describe(s: WaitStatus) -> String {
    match s {
        WaitStatus::Exited(_, code) => format!("exit code {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("signal {sig:?}"),
        other => format!("{other:?}"),
    }
}

/// Guest memory seen from /proc/meminfo: total, and the peak of total - available.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total_kib: u64,
    pub peak_used_kib: u64,
    pub last_used_kib: u64,
}

impl Memory {
    fn sample(&mut self) {
        if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
            self.add(&text);
        }
    }

    /// Folds one /proc/meminfo reading in.
    pub fn add(&mut self, meminfo: &str) {
        let field = |name: &str| {
            meminfo.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        if let (Some(total), Some(avail)) = (field("MemTotal"), field("MemAvailable")) {
            self.total_kib = total;
            self.last_used_kib = total.saturating_sub(avail);
            self.peak_used_kib = self.peak_used_kib.max(self.last_used_kib);
        }
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "total {} MiB, peak used {} MiB, used at end {} MiB (MemTotal - MemAvailable)",
            self.total_kib >> 10,
            self.peak_used_kib >> 10,
            self.last_used_kib >> 10
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_from_cmdline() {
        let p = Params::parse("console=ttyS0 quiet rootbox.port=1024 rootbox.output=/dev/vda\n")
            .expect("valid");
        assert_eq!(p, Params { port: 1024, output: "/dev/vda".into(), probe: false });
        let p = Params::parse("rootbox.port=1 rootbox.port=7 rootbox.output=/dev/vdb").expect("ok");
        assert_eq!(p.port, 7, "the last occurrence wins");
        assert!(Params::parse("rootbox.probe=1").expect("probe").probe);
    }

    #[test]
    fn params_refused() {
        assert_eq!(
            Params::parse("rootbox.output=/dev/vda"),
            Err(ParamError::Missing("rootbox.port"))
        );
        assert_eq!(Params::parse("rootbox.port=9"), Err(ParamError::Missing("rootbox.output")));
        assert!(matches!(
            Params::parse("rootbox.port=x rootbox.output=/dev/vda"),
            Err(ParamError::Invalid { key: "rootbox.port", .. })
        ));
        for bad in ["/etc/passwd", "/dev/../etc/passwd", "vda"] {
            let e = Params::parse(&format!("rootbox.port=1 rootbox.output={bad}"));
            assert!(matches!(e, Err(ParamError::Invalid { key: "rootbox.output", .. })), "{bad}");
        }
    }

    #[test]
    fn memory_peak() {
        let mut m = Memory::default();
        m.add("MemTotal:  262144 kB\nMemFree: 1 kB\nMemAvailable:  200000 kB\n");
        m.add("MemTotal:  262144 kB\nMemAvailable:  250000 kB\n");
        assert_eq!(m, Memory { total_kib: 262144, peak_used_kib: 62144, last_used_kib: 12144 });
        m.add("garbage");
        assert_eq!(m.last_used_kib, 12144);
        assert!(m.to_string().starts_with("total 256 MiB, peak used 60 MiB"));
    }
}

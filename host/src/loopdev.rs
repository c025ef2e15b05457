//! The host loop device a container build's worker attached to the output, found from the
//! host's side (the kernel's record of the device's backing file, never the worker's word),
//! and given back with the kernel's settings once the sandbox has ended: a worker that was
//! killed, or whose build was interrupted (SIGINT, SIGTERM, a timeout), never ran its own
//! restore, and left the device passing no flushes to the disk and with a dirty limit
//! (`rootbox_proto::device`), for whoever attaches it next.
//!
//! Other users' loop devices are only looked at through sysfs (`loop/backing_file`, which
//! never touches their backing filesystem): only a device whose backing file has the
//! output's path is opened and asked (`LOOP_GET_STATUS64`) for its backing file's device and
//! inode numbers.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rootbox_proto::device::LOOP_DEFAULTS;

/// How long a killed worker's device may stay attached (its last close detaches it) before
/// it is given back anyway.
const DETACHED_WITHIN: Duration = Duration::from_secs(2);

/// The file a loop device is attached to: its device and inode numbers, and its path as the
/// kernel prints it (`/proc/self/fd`; an unnamed file's is `DIR/#INO (deleted)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    dev: u64,
    ino: u64,
    path: Option<String>,
}

impl Backing {
    pub fn of(f: &File) -> io::Result<Backing> {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata()?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned));
        Ok(Backing { dev: m.dev(), ino: m.ino(), path })
    }

    fn is(&self, (dev, ino): (u64, u64)) -> bool {
        (self.dev, self.ino) == (dev, ino)
    }
}

/// What `/dev/loopN` is attached to now: `Ok(None)` when nothing.
fn attached(n: u32) -> io::Result<Option<(u64, u64)>> {
    let f = File::open(format!("/dev/loop{n}"))?;
    crate::sys::loop_backing(f.as_fd())
}

/// Whether sysfs shows device `n` attached to a file of `file`'s path (the cheap test made
/// before [`attached`] asks the device itself).
fn names(n: u32, file: &Backing) -> bool {
    let shown = std::fs::read_to_string(format!("/sys/block/loop{n}/loop/backing_file"));
    match (shown, &file.path) {
        (Ok(shown), Some(path)) => shown.strip_suffix('\n').unwrap_or(&shown) == path,
        _ => false,
    }
}

/// The numbers of the loop devices attached to `file` now.
pub fn attached_to(file: &Backing) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    let mut out: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("loop")?.parse::<u32>().ok())
        .filter(|&n| names(n, file))
        .filter(|&n| attached(n).is_ok_and(|b| b.is_some_and(|b| file.is(b))))
        .collect();
    out.sort_unstable();
    out
}

/// Puts the kernel's settings back on loop device `n`, which was attached to `file`: only
/// when the device says it is free now or still holds `file` (not when another file holds it,
/// whose build's tuning is its own, nor when it cannot be asked). Whether it was ours to give
/// back.
pub fn give_back(n: u32, file: &Backing) -> bool {
    match attached(n) {
        Ok(None) => {}
        Ok(Some(b)) if file.is(b) => {}
        _ => return false,
    }
    let block = format!("/sys/block/loop{n}");
    for (knob, default) in LOOP_DEFAULTS {
        let knob = Path::new(&block).join(knob);
        if knob.exists() {
            // Nothing to report: the build's result is decided; the next build on the
            // device puts these back too.
            let _ = std::fs::write(&knob, default);
        }
    }
    true
}

/// Ends a sandbox with `kill` (nothing, for one that has exited) and gives its device back,
/// where it has one: looked for first (attached while the worker lives), then given back once
/// detached (see [`Found::ended`]).
pub fn end_giving_back(found: Option<&Found>, kill: impl FnOnce()) {
    if let Some(f) = found {
        f.look();
    }
    kill();
    if let Some(f) = found {
        f.ended();
    }
}

/// The loop devices found attached to one output, shared between the sandbox that watches
/// for them and whoever gives them back (the sandbox when it ends, the signal handler).
#[derive(Debug, Clone)]
pub struct Found {
    backing: Backing,
    devices: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
}

impl Found {
    pub fn new(backing: Backing) -> Found {
        Found { backing, devices: Default::default() }
    }

    fn known(&self) -> Vec<u32> {
        self.devices.lock().map(|k| k.clone()).unwrap_or_default()
    }

    /// Looks for the output's device, unless one is known (a build attaches one); whether
    /// one is known now.
    pub fn look(&self) -> bool {
        if !self.known().is_empty() {
            return true;
        }
        let now = attached_to(&self.backing);
        let Ok(mut known) = self.devices.lock() else { return false };
        if known.is_empty() {
            known.extend(now);
        }
        !known.is_empty()
    }

    /// The sandbox has ended: waits, for at most [`DETACHED_WITHIN`], until no device found
    /// holds the output any more, then gives every one back (see [`give_back`]); the numbers
    /// given back.
    pub fn ended(&self) -> Vec<u32> {
        let known = self.known();
        let start = Instant::now();
        while known
            .iter()
            .any(|&n| attached(n).is_ok_and(|b| b.is_some_and(|b| self.backing.is(b))))
            && start.elapsed() < DETACHED_WITHIN
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        known.into_iter().filter(|&n| give_back(n, &self.backing)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file attached to a loop device (`losetup`), tuned as a worker tunes one; detached
    /// and given the defaults on drop.
    struct Attached {
        n: u32,
        file: File,
    }

    impl Attached {
        fn new(path: &Path) -> Attached {
            std::fs::write(path, vec![0u8; 1 << 20]).expect("backing file");
            let out = std::process::Command::new("losetup")
                .args(["-f", "--show"])
                .arg(path)
                .output()
                .expect("losetup");
            assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let n = dev.trim_start_matches("/dev/loop").parse().expect("a loop device number");
            std::fs::write(knob(n, "queue/write_cache"), "write through").expect("tune");
            std::fs::write(knob(n, "bdi/strict_limit"), "1").expect("tune");
            Attached { n, file: File::open(path).expect("open") }
        }
    }

    impl Attached {
        fn detach(&self) {
            let _ = std::process::Command::new("losetup")
                .arg("-d")
                .arg(format!("/dev/loop{}", self.n))
                .status();
        }
    }

    impl Drop for Attached {
        fn drop(&mut self) {
            self.detach();
            for (k, v) in LOOP_DEFAULTS {
                let _ = std::fs::write(knob(self.n, k), v);
            }
        }
    }

    fn knob(n: u32, k: &str) -> std::path::PathBuf {
        Path::new(&format!("/sys/block/loop{n}")).join(k)
    }

    fn read(n: u32, k: &str) -> String {
        std::fs::read_to_string(knob(n, k)).expect("knob").trim().to_string()
    }

    /// Root and loop devices, or a printed reason (a failure under `make test`).
    fn can_attach() -> bool {
        let why = if !nix::unistd::geteuid().is_root() {
            "not root"
        } else if !Path::new("/dev/loop-control").exists() {
            "no /dev/loop-control"
        } else {
            return true;
        };
        assert!(std::env::var("ROOTBOX_STRICT").as_deref() != Ok("1"), "{why}");
        eprintln!("SKIP: {why}");
        false
    }

    /// The device attached to the output is found from the kernel's record and given back
    /// with the defaults; a device attached to another file is neither found nor touched.
    #[test]
    fn the_outputs_device_is_found_and_given_back_and_no_other() {
        if !can_attach() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (ours, theirs) =
            (Attached::new(&dir.path().join("a")), Attached::new(&dir.path().join("b")));
        let backing = Backing::of(&ours.file).expect("stat");
        assert_eq!(attached_to(&backing), vec![ours.n]);
        let found = Found::new(backing.clone());
        assert!(found.look());
        // The build ends: its device is detached, then given back.
        ours.detach();
        assert_eq!(found.ended(), vec![ours.n]);
        assert_eq!(
            (read(ours.n, "queue/write_cache"), read(ours.n, "bdi/strict_limit")),
            ("write back".into(), "0".into())
        );
        assert_eq!(read(theirs.n, "queue/write_cache"), "write through", "another file's device");
        // Once another file holds the device, it is not ours to give back.
        assert!(!give_back(theirs.n, &backing));
        assert_eq!(read(theirs.n, "queue/write_cache"), "write through");
    }
}

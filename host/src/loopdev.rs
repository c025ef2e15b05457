//! The host loop device a container build's worker attached to the output, found from the
//! host's side (the kernel's record of the device's backing file, never the worker's word),
//! and given back with the kernel's settings once the sandbox has ended: a worker that was
//! killed, or whose build was interrupted (SIGINT, SIGTERM, a timeout), never ran its own
//! restore, and left the device passing no flushes to the disk and with a dirty limit
//! (`rootbox_proto::device`), for whoever attaches it next.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use rootbox_proto::device::LOOP_DEFAULTS;

/// The file a loop device is attached to: its device and inode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backing {
    dev: u64,
    ino: u64,
}

impl Backing {
    pub fn of(f: &File) -> std::io::Result<Backing> {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata()?;
        Ok(Backing { dev: m.dev(), ino: m.ino() })
    }
}

/// What `/dev/loopN` is attached to now: `None` when nothing (or no such device).
fn attached(n: u32) -> Option<Backing> {
    let f = File::open(format!("/dev/loop{n}")).ok()?;
    match crate::sys::loop_backing(f.as_fd()) {
        Ok(Some((dev, ino))) => Some(Backing { dev, ino }),
        _ => None,
    }
}

/// The numbers of the loop devices attached to `file` now (sysfs lists the attached ones
/// with a `loop/` directory; each is asked for its backing file).
pub fn attached_to(file: Backing) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    let mut out: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("loop")?.parse::<u32>().ok())
        .filter(|n| Path::new(&format!("/sys/block/loop{n}/loop")).exists())
        .filter(|&n| attached(n) == Some(file))
        .collect();
    out.sort_unstable();
    out
}

/// Puts the kernel's settings back on loop device `n`, which was attached to `file`:
/// unless it is attached to another file now (another build took the free device, and its
/// tuning is its own). Whether it was put back.
pub fn give_back(n: u32, file: Backing) -> bool {
    if attached(n).is_some_and(|b| b != file) {
        return false;
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

    /// Looks for devices attached to the output now and remembers them; whether any is known.
    pub fn look(&self) -> bool {
        let now = attached_to(self.backing);
        let Ok(mut known) = self.devices.lock() else { return false };
        for n in now {
            if !known.contains(&n) {
                known.push(n);
            }
        }
        !known.is_empty()
    }

    /// Waits, for at most `limit`, until no device found is attached to the output any more
    /// (a killed worker's last close detaches it).
    pub fn wait_detached(&self, limit: std::time::Duration) {
        let start = std::time::Instant::now();
        let known = self.devices.lock().map(|k| k.clone()).unwrap_or_default();
        while known.iter().any(|&n| attached(n) == Some(self.backing)) && start.elapsed() < limit {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Gives every device found back (see [`give_back`]); the numbers given back.
    pub fn give_back(&self) -> Vec<u32> {
        let known = self.devices.lock().map(|k| k.clone()).unwrap_or_default();
        known.into_iter().filter(|&n| give_back(n, self.backing)).collect()
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

    impl Drop for Attached {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .arg("-d")
                .arg(format!("/dev/loop{}", self.n))
                .status();
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
        assert_eq!(attached_to(backing), vec![ours.n]);
        let found = Found::new(backing);
        assert!(found.look());
        assert_eq!(found.give_back(), vec![ours.n]);
        assert_eq!(
            (read(ours.n, "queue/write_cache"), read(ours.n, "bdi/strict_limit")),
            ("write back".into(), "0".into())
        );
        assert_eq!(read(theirs.n, "queue/write_cache"), "write through", "another file's device");
        // Once another file holds the device, it is not ours to give back.
        assert!(!give_back(theirs.n, backing));
        assert_eq!(read(theirs.n, "queue/write_cache"), "write through");
    }
}

//! Does KVM really work here? `/dev/kvm` opening proves little: under nested virtualisation
//! (e.g. a PVM host module) QEMU aborts or the guest hangs in early boot. So the probe boots
//! the worker kernel and initramfs with KVM and `rootbox.probe=1`, and KVM counts as working
//! only if the worker prints its probe marker within a few seconds. The verdict is cached for
//! the rest of the host's boot, keyed by the boot id, the host kernel, the VMM binary and the
//! worker kernel and initramfs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::console::Console;
use super::vm::{self, Accel, Vmm};
use super::vmm;

/// How long a probe boot may take (a working KVM boots the worker in well under a second).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_MEMORY_MIB: u32 = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Works,
    Broken(String),
}

/// What to boot for the probe.
pub struct Target<'a> {
    pub vmm: Vmm,
    pub binary: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
}

/// The (cached) verdict for `t`.
pub fn verdict(t: &Target) -> Verdict {
    if let Some(why) = device_problem() {
        return Verdict::Broken(why);
    }
    let key = cache_key(t);
    let cache = cache_path();
    if let Some(v) = cache.as_deref().and_then(|p| read_cache(p, &key)) {
        return v;
    }
    let v = boot(t);
    if let Some(p) = cache {
        write_cache(&p, &key, &v);
    }
    v
}

/// Why `/dev/kvm` cannot be used at all, found without booting anything.
pub fn device_problem() -> Option<String> {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Some("there is no /dev/kvm".into());
    }
    match std::fs::File::options().read(true).write(true).open(dev) {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm cannot be opened read-write: {e}")),
    }
}

fn boot(t: &Target) -> Verdict {
    let cmdline = vm::cmdline(None);
    // Firecracker's config file lives here for the probe's duration.
    let dir = match tempfile::Builder::new().prefix("rootbox-kvm-probe-").tempdir() {
        Ok(d) => d,
        Err(e) => return Verdict::Broken(format!("cannot make a temp dir: {e}")),
    };
    let guest = vmm::Guest {
        vmm: t.vmm,
        binary: t.binary,
        accel: Accel::Kvm,
        memory_mib: PROBE_MEMORY_MIB,
        kernel: t.kernel,
        initrd: t.initrd,
        cmdline: &cmdline,
        output: None,
        vsock: vmm::Vsock::None,
    };
    let mut cmd = match vmm::command(&guest, dir.path()) {
        Ok(c) => c,
        Err(e) => return Verdict::Broken(format!("cannot write the probe config: {e}")),
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match super::machine::spawn_in_group(&mut cmd, 0) {
        Ok(c) => c,
        Err(e) => return Verdict::Broken(format!("cannot start {}: {e}", t.binary.display())),
    };
    let console = Console::default();
    console.follow_child(&mut child, "");
    let start = Instant::now();
    let verdict = loop {
        if console.marks().probe_ok {
            break Verdict::Works;
        }
        if let Some(line) = console.marks().fatal {
            break Verdict::Broken(format!("a probe boot with KVM failed: {line}"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Give the reader a moment to take in the last lines.
            std::thread::sleep(Duration::from_millis(50));
            if console.marks().probe_ok {
                break Verdict::Works;
            }
            let last = console.tail.lines().pop().unwrap_or_default();
            break Verdict::Broken(format!(
                "a probe boot with KVM ended ({status}) before the worker started{}",
                if last.is_empty() { String::new() } else { format!(": {last}") }
            ));
        }
        if start.elapsed() > PROBE_TIMEOUT {
            break Verdict::Broken(format!(
                "a probe boot with KVM did not reach the worker within {} s (nested or broken KVM)",
                PROBE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    verdict
}

/// `$XDG_RUNTIME_DIR/rootbox/kvm-probe`, or `/run/rootbox/kvm-probe` for root; both are
/// cleared at boot. Nothing is cached elsewhere.
pub fn cache_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("rootbox/kvm-probe"));
    }
    nix::unistd::geteuid().is_root().then(|| PathBuf::from("/run/rootbox/kvm-probe"))
}

fn file_id(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => {
            format!("{} {} {}.{} {}", p.display(), m.size(), m.mtime(), m.mtime_nsec(), m.ino())
        }
        Err(_) => format!("{} missing", p.display()),
    }
}

fn cache_key(t: &Target) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut h = Sha256::new();
    for part in [
        "kvm-probe v1".to_string(),
        read("/proc/sys/kernel/random/boot_id"),
        read("/proc/sys/kernel/osrelease"),
        t.vmm.name().to_string(),
        file_id(t.binary),
        file_id(t.kernel),
        file_id(t.initrd),
    ] {
        h.update(part.trim().as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// `KEY\nworks\n` or `KEY\nbroken\nREASON\n`.
fn parse_cache(text: &str, key: &str) -> Option<Verdict> {
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    match lines.next()? {
        "works" => Some(Verdict::Works),
        // The same words as the probe that wrote it: pull and doctor print this verdict as the
        // reason for their choice, and must agree whichever of them probed first.
        "broken" => Some(Verdict::Broken(lines.next()?.to_string())),
        _ => None,
    }
}

fn render_cache(key: &str, v: &Verdict) -> String {
    match v {
        Verdict::Works => format!("{key}\nworks\n"),
        Verdict::Broken(why) => format!("{key}\nbroken\n{}\n", why.replace('\n', " ")),
    }
}

fn read_cache(path: &Path, key: &str) -> Option<Verdict> {
    parse_cache(&std::fs::read_to_string(path).ok()?, key)
}

/// Best effort: a cache that cannot be written only costs another probe.
fn write_cache(path: &Path, key: &str, v: &Verdict) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
        use std::io::Write;
        if tmp.write_all(render_cache(key, v).as_bytes()).is_ok() {
            let _ = tmp.persist(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip() {
        let w = render_cache("k1", &Verdict::Works);
        assert_eq!(parse_cache(&w, "k1"), Some(Verdict::Works));
        assert_eq!(parse_cache(&w, "k2"), None, "another key is a miss");
        let b = render_cache("k1", &Verdict::Broken("hangs\nin boot".into()));
        assert_eq!(parse_cache(&b, "k1"), Some(Verdict::Broken("hangs in boot".into())));
        assert_eq!(parse_cache("k1\nmaybe\n", "k1"), None);
        assert_eq!(parse_cache("", "k1"), None);
    }

    #[test]
    fn cache_file_written_atomically() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("sub/kvm-probe");
        write_cache(&p, "key", &Verdict::Broken("no".into()));
        assert!(matches!(read_cache(&p, "key"), Some(Verdict::Broken(_))));
        write_cache(&p, "key", &Verdict::Works);
        assert_eq!(read_cache(&p, "key"), Some(Verdict::Works));
        assert_eq!(std::fs::read_dir(p.parent().expect("dir")).expect("ls").count(), 1);
    }

    #[test]
    fn key_depends_on_the_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let k = d.path().join("vmlinux");
        std::fs::write(&k, b"a").expect("write");
        let t = Target { vmm: Vmm::Qemu, binary: Path::new("/bin/true"), kernel: &k, initrd: &k };
        let one = cache_key(&t);
        assert_eq!(one, cache_key(&t));
        std::fs::write(&k, b"bb").expect("write");
        assert_ne!(one, cache_key(&t));
    }
}

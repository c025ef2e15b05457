//! Nothing left, nothing leaked: `kill -9` of rootbox mid-pull leaves no file beside OUT, no
//! process and no loop device, in both sandboxes (the microVM's socket directory, which
//! needs a name, is removed by the next run); local sources are opened beneath their root,
//! regular files only; and data a later layer deleted or replaced is not in the image's
//! bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rootbox_tests::lifecycle::{
    descendants, expect_nothing_left, finish, noise_tar, pull_args, signal, spawn_rootbox,
};
use rootbox_tests::run::expect_dir_holds;
use rootbox_tests::{require_root, require_vm, Env};

use crate::util::{self, NoisePull};

fn tempdir() -> tempfile::TempDir {
    util::tempdir("rootbox-leftovers-")
}

/// Loop devices whose backing file is under `dir` (a deleted O_TMPFILE still names it).
fn loops_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").expect("/sys/block").flatten() {
        let backing = e.path().join("loop/backing_file");
        if let Ok(b) = fs::read_to_string(&backing) {
            if b.contains(&needle) {
                out.push(format!("{}: {}", e.file_name().to_string_lossy(), b.trim()));
            }
        }
    }
    out
}

/// The loop device (`loopN`) whose backing file is under `dir`, if one is.
fn loop_under(dir: &Path) -> Option<String> {
    loops_under(dir).first().and_then(|l| l.split(':').next().map(str::to_owned))
}

fn expect_no_loops_under(dir: &Path) {
    let start = Instant::now();
    loop {
        let left = loops_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "loop devices left behind: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a pull of 512 MiB of noise, kills rootbox with SIGKILL once the worker applies and
/// a second more has passed; returns (output dir, private TMPDIR, the tempdir holding them).
fn kill_9_mid_pull(env: &Env, isolation: &str) -> (PathBuf, PathBuf, tempfile::TempDir) {
    let tmp = tempdir();
    // `_rx` stays alive: dropping it would close rootbox's stderr under it.
    let NoisePull { mut child, rx: _rx, out_dir, private_tmp, seen } =
        NoisePull::start(env, tmp.path(), isolation);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(child.try_wait().expect("try_wait"), None, "rootbox ended early: {seen:#?}");
    // The container's device: `kill -9` of rootbox leaves it tuned (no process is left to
    // give it back), so the test does, as the next build on it would.
    let dev = loop_under(&out_dir);
    child.kill().expect("kill -9");
    let _ = child.wait();
    expect_nothing_left(&[&out_dir]);
    expect_no_loops_under(&out_dir);
    if let Some(dev) = dev {
        let block = Path::new("/sys/block").join(&dev);
        if !block.join("loop/backing_file").exists() {
            for (knob, default) in rootbox_proto::device::LOOP_DEFAULTS {
                let _ = fs::write(block.join(knob), default);
            }
        }
    }
    (out_dir, private_tmp, tmp)
}

#[test]
fn kill_9_mid_pull_leaves_nothing_in_the_container() {
    let env = require_root!();
    let (_, private_tmp, _tmp) = kill_9_mid_pull(&env, "container");
    expect_dir_holds(&private_tmp, &[]);
}

#[test]
fn kill_9_mid_pull_leaves_only_the_vm_socket_dir_which_the_next_run_removes() {
    let env = require_vm!();
    let (out_dir, private_tmp, tmp) = kill_9_mid_pull(&env, "vm");
    let left: Vec<String> = fs::read_dir(&private_tmp)
        .expect("read tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.len() == 1 && left[0].starts_with("rootbox-") && left[0].ends_with(".vm"),
        "expected the killed run's socket directory only: {left:?}"
    );
    // The next run (any source) removes it.
    let small = tmp.path().join("in/small.tar");
    noise_tar(&small, 1, 1 << 20);
    let out = out_dir.join("next.ext4");
    let args =
        pull_args(&env, &format!("rootfs-tar:{}", small.display()), &out, &["--isolation", "vm"]);
    let (child, rx) = spawn_rootbox(&env, &args, &[("TMPDIR", &private_tmp)]);
    let (code, lines) = finish(child, &rx, Duration::from_secs(300));
    assert_eq!(code, 0, "the next pull failed:\n{}", lines.join("\n"));
    expect_dir_holds(&private_tmp, &[]);
    expect_dir_holds(&out_dir, &["next.ext4"]);
}

/// `size` bytes of `tag-00000000-tag-00000001-…`: text no other part of an image holds.
fn pattern(tag: &str, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size + 64);
    let mut i = 0u32;
    while v.len() < size {
        v.extend_from_slice(format!("{tag}-{i:08}-").as_bytes());
        i += 1;
    }
    v.truncate(size);
    v
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A lower layer holds two secrets (then 64 MiB of noise, so the microVM's guest, short of
/// memory, writes them back before the next layer runs); the upper layer whites one out and
/// replaces the other. Neither may be in the image's raw bytes; a file that stays must be.
///
/// Only the microVM shows the leak without the scrub: in the container (the host's memory)
/// a short pull's deleted data never leaves the page cache, so a container variant would
/// pass with the scrub broken. Both sandboxes run the same FITRIM.
fn deleted_data_is_not_in_the_image_built_in_the_vm(env: &Env) {
    let isolation = "vm";
    use rootbox_tests::layer::{Entry as E, LayerBuilder};
    use rootbox_tests::lifecycle::Noise;
    use rootbox_tests::oci::{Compression, Image};
    use std::io::Read;

    let tmp = tempdir();
    let whited = pattern("ROOTBOX-SECRET-WHITED-OUT", 256 << 10);
    let replaced = pattern("ROOTBOX-SECRET-REPLACED", 256 << 10);
    let kept = pattern("ROOTBOX-KEPT", 256 << 10);
    let mut noise = Vec::new();
    Noise::new(7, 64 << 20).read_to_end(&mut noise).expect("noise");
    let lower = LayerBuilder::new()
        .extend([
            E::dir("etc"),
            E::file("etc/a.key", &whited),
            E::file("etc/b.key", &replaced),
            E::file("etc/kept", &kept),
            E::file("noise", &noise),
        ])
        .finish();
    let upper = LayerBuilder::new()
        .extend([E::whiteout("etc/a.key"), E::file("etc/b.key", b"rotated\n")])
        .finish();
    let oci = tmp.path().join("oci");
    Image::from_tars(&[lower, upper], Compression::None).write_oci(&oci, None).expect("oci");
    let out = tmp.path().join("out.ext4");
    // A fixed size, so shrinking (which moves blocks into free space) cannot hide a leak.
    let args = ["--isolation", isolation, "--size", "1G"];
    let o = env.pull(&format!("oci:{}", oci.display()), &out, &args);
    assert_eq!(o.code, 0, "pull failed: {}", o.stderr);
    let image = fs::read(&out).expect("read image");
    let probe = |p: &[u8]| holds(&image, &p[..64]);
    assert!(probe(&kept), "{isolation}: the scan cannot find content the image keeps");
    assert!(!probe(&whited), "{isolation}: the whited-out secret is in the image's bytes");
    assert!(!probe(&replaced), "{isolation}: the replaced secret is in the image's bytes");
}

#[test]
fn deleted_data_is_not_in_the_image_in_the_vm() {
    let env = require_vm!();
    deleted_data_is_not_in_the_image_built_in_the_vm(&env);
}

/// A loop device's flush and dirty-limit settings: (queue/write_cache, bdi/strict_limit,
/// bdi/max_ratio).
fn loop_settings(dev: &str) -> (String, String, String) {
    let read = |knob: &str| {
        let p = Path::new("/sys/block").join(dev).join(knob);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_string()
    };
    (read("queue/write_cache"), read("bdi/strict_limit"), read("bdi/max_ratio"))
}

/// How a build under test ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Finished,
    /// SIGINT to rootbox mid-apply (Ctrl-C).
    Interrupted,
    /// SIGKILL to the worker mid-apply: it never runs its own clean-up.
    WorkerKilled,
}

/// The worker's loop device passes no flushes on and has a dirty limit while it builds;
/// those settings outlive the device's detach, so a build gives the kernel's defaults back
/// however it ends, finished or not: the next user of the host's loop device gets flushes
/// that reach the disk. (An interrupted or killed worker cannot: the host does.) Read as
/// soon as rootbox has exited, when both give-backs are done; if another test's build has
/// taken the freed device by then, its tuning is its own and the run says nothing: tried
/// again, never passed without looking.
fn gives_its_loop_device_back(ending: Ending) {
    let env = require_root!();
    for attempt in 1..=5 {
        match build_and_end(&env, ending) {
            Ok((dev, settings)) => {
                let defaults = ("write back".to_string(), "0".to_string(), "100".to_string());
                assert_eq!(settings, defaults, "{dev} after the build ({ending:?})");
                return;
            }
            Err(held) => eprintln!("{ending:?}: attempt {attempt}: right after exit {held}"),
        }
    }
    panic!("{ending:?}: in each of 5 attempts the device was held right after rootbox exited");
}

/// One build ended as `ending`: its device and the device's settings, read right after
/// rootbox exited while the device was free before and after the read (a build attaches a
/// device before it tunes it, so what was read is this build's, not a later one's), or what
/// held it.
fn build_and_end(env: &Env, ending: Ending) -> Result<(String, (String, String, String)), String> {
    let tmp = tempdir();
    let NoisePull { child, rx, out_dir, seen, .. } = NoisePull::start(env, tmp.path(), "container");
    let start = Instant::now();
    let dev = loop {
        if let Some(dev) = loop_under(&out_dir) {
            break dev;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no loop device found: {seen:#?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let tuned = loop_settings(&dev);
    assert_eq!(
        (tuned.0.as_str(), tuned.1.as_str()),
        ("write through", "1"),
        "{dev} while the build applies"
    );
    let want_code = match ending {
        Ending::Finished => 0,
        Ending::Interrupted => {
            signal(child.id(), "INT");
            130
        }
        Ending::WorkerKilled => {
            // The session, PID 1 of the sandbox's namespace (rootbox's grandchild): the kernel
            // kills the rest of the namespace with it.
            let procs = descendants(child.id());
            let session = procs.iter().find(|&&(_, parent, _)| parent != child.id());
            let (session, _, _) = session.unwrap_or_else(|| panic!("no session in {procs:?}"));
            signal(*session, "KILL");
            1
        }
    };
    let (code, lines) = finish(child, &rx, Duration::from_secs(300));
    let backing = Path::new("/sys/block").join(&dev).join("loop/backing_file");
    let held = fs::read_to_string(&backing);
    let settings = loop_settings(&dev);
    let held_after = fs::read_to_string(&backing);
    assert_eq!(code, want_code, "{ending:?}: {}", lines.join("\n"));
    expect_no_loops_under(&out_dir);
    match (held, held_after) {
        (Err(_), Err(_)) => Ok((dev, settings)),
        (Ok(file), _) | (_, Ok(file)) => Err(format!("{dev} held {}", file.trim())),
    }
}

#[test]
fn a_finished_build_gives_its_loop_device_back_as_the_kernel_set_it_up() {
    gives_its_loop_device_back(Ending::Finished);
}

#[test]
fn an_interrupted_build_gives_its_loop_device_back_as_the_kernel_set_it_up() {
    gives_its_loop_device_back(Ending::Interrupted);
}

#[test]
fn a_killed_worker_s_loop_device_is_given_back_as_the_kernel_set_it_up() {
    gives_its_loop_device_back(Ending::WorkerKilled);
}

/// An OCI layout of one small layer; returns (source, the layer blob's path).
fn small_oci(dir: &Path) -> (String, PathBuf) {
    use rootbox_tests::layer::{Entry as E, LayerBuilder};
    use rootbox_tests::oci::{Compression, Image};
    let tar =
        LayerBuilder::new().extend([E::dir("etc"), E::file("etc/hostname", b"box\n")]).finish();
    let oci = dir.join("oci");
    Image::from_tars(&[tar], Compression::None).write_oci(&oci, None).expect("oci");
    // The layer is the largest blob (the others are small JSON documents).
    let blob = fs::read_dir(oci.join("blobs/sha256"))
        .expect("blobs")
        .flatten()
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a blob")
        .path();
    (format!("oci:{}", oci.display()), blob)
}

fn expect_refused_quickly(env: &Env, source: &str, out: &Path, mention: &str) {
    let start = Instant::now();
    let args = pull_args(env, source, out, &["--isolation", "container"]);
    let (child, rx) = spawn_rootbox(env, &args, &[]);
    let (code, lines) = finish(child, &rx, Duration::from_secs(30));
    let text = lines.join("\n");
    assert_eq!(code, 3, "{source}: exit code {code}:\n{text}");
    assert!(text.contains(mention), "{source}: error does not mention {mention:?}:\n{text}");
    assert!(start.elapsed() < Duration::from_secs(10), "{source}: took {:?}", start.elapsed());
    assert!(!out.exists(), "{source}: an output was written");
}

/// A layer blob that is a symlink to a host file holding exactly the right bytes: opened by
/// path it would verify and build; opened beneath the layout it is refused.
#[test]
fn a_layout_blob_that_is_a_symlink_out_of_the_layout_is_refused() {
    let env = require_root!();
    let tmp = tempdir();
    let (source, blob) = small_oci(tmp.path());
    let outside = tmp.path().join("host-file");
    fs::rename(&blob, &outside).expect("move the blob out");
    std::os::unix::fs::symlink(&outside, &blob).expect("symlink");
    expect_refused_quickly(&env, &source, &tmp.path().join("out.ext4"), "symlink");
}

/// A FIFO where a blob or an archive should be: refused at once as not a regular file (a
/// FIFO opened for reading by path waits for a writer forever).
#[test]
fn fifos_as_local_sources_are_refused_at_once() {
    let env = require_root!();
    let tmp = tempdir();
    let (source, blob) = small_oci(tmp.path());
    fs::remove_file(&blob).expect("rm blob");
    let mkfifo = |p: &Path| {
        let ok = std::process::Command::new("mkfifo").arg(p).status();
        assert!(ok.is_ok_and(|s| s.success()), "mkfifo {}", p.display());
    };
    mkfifo(&blob);
    expect_refused_quickly(&env, &source, &tmp.path().join("a.ext4"), "FIFO");
    let archive = tmp.path().join("image.tar");
    mkfifo(&archive);
    for transport in ["docker-archive", "rootfs-tar"] {
        let source = format!("{transport}:{}", archive.display());
        expect_refused_quickly(&env, &source, &tmp.path().join("b.ext4"), "FIFO");
    }
}

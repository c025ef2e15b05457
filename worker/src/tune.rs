//! The image's device tuned for the build through sysfs (mounted only for the writes where
//! it is absent, and unmounted before any layer content is read), and a host loop device given
//! back as the kernel set it up. What fails is a warning: the build is the same without, only
//! slower.

use std::path::Path;

use rootbox_proto::device::LOOP_DEFAULTS;
use rustix::mount::MountFlags;

use crate::session::chain;
use crate::sys::kernel::{Kernel, Mount};
use crate::sys::SysError;

/// How much of the image may sit dirty in the page cache before the kernel writes it out to
/// the device: the build's writes then reach the output file while layers still apply, where
/// the host writes them out to its disk (`host/src/output.rs`, `Flusher`), instead of all at
/// the syncfs that ends the apply (measured on Debian minbase into a loop-mounted image, with
/// flushes still passed on: that syncfs took 0.62-0.83 s unbounded, 0.28-0.34 s bounded with
/// the host writing out). Only where the kernel has `max_bytes` (6.2+): the microVM's small
/// memory bounds its dirty pages anyway.
const DIRTY_MAX_BYTES: u64 = 32 << 20;

/// Runs `f` with sysfs at `/sys`, mounting it for the call where it is absent.
fn with_sysfs<K: Kernel, R>(k: &K, f: impl FnOnce(&Path) -> R) -> Result<R, SysError> {
    let sysfs = Path::new("/sys");
    let mounted_here = !k.exists(&sysfs.join("fs"));
    if mounted_here {
        let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        k.mount(&Mount::virtual_fs("sysfs", sysfs, flags, c""))?;
    }
    let r = f(sysfs);
    if mounted_here {
        let _ = k.unmount(sysfs, true);
    }
    Ok(r)
}

/// The kernel's name of the device at `dev` (`loop0` for `/dev/loop0`).
fn name(dev: &Path) -> String {
    dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Tunes the new filesystem and its device; the warnings for what could not be tuned.
pub fn tune(k: &impl Kernel, dev: &Path) -> Vec<String> {
    let name = name(dev);
    let warn = |what: &str, e: &SysError| format!("could not {what}: {}", chain(e).join(": "));
    let tuned = with_sysfs(k, |sysfs| {
        let steps: [(&str, Result<(), SysError>); 3] = [
            ("pack allocations (shrinking may be slower)", pack_allocations(k, sysfs, &name)),
            (
                "bound the output device's dirty pages (the build may end in a long write-out)",
                bound_dirty_pages(k, sysfs, &name),
            ),
            (
                "turn off the output device's flushes (the shrink may be slower)",
                skip_flushes(k, sysfs, &name),
            ),
        ];
        steps.into_iter().filter_map(|(what, r)| r.err().map(|e| warn(what, &e))).collect()
    });
    tuned.unwrap_or_else(|e| {
        vec![warn("mount sysfs to tune the output device (the build may be slower)", &e)]
    })
}

/// Makes ext4 allocate inodes (and so data) from the first block group on, instead of
/// spreading top-level directories across the whole scratch filesystem, so the final shrink
/// moves little or nothing (`inode_goal`). (`mb_prefetch` at 0, tried for reproducibility,
/// spread a streamed Debian pull's blocks over a 34.5 GiB scratch filesystem so that
/// resize2fs ran out of space shrinking it: see `registry::cache::registry_debian_in_eight_layers…`.)
fn pack_allocations(k: &impl Kernel, sysfs: &Path, dev: &str) -> Result<(), SysError> {
    // The first inode after the reserved ones and lost+found.
    k.write_knob(&sysfs.join("fs/ext4").join(dev).join("inode_goal"), "12")
}

/// A strict per-device limit of [`DIRTY_MAX_BYTES`] on the device's backing-dev info. Where
/// the kernel has no `max_bytes` knob this does nothing and is no failure. Where writeback
/// happens changes no block the filesystem allocates: allocation is at `write()`
/// (`nodelalloc`), of written extents (`nodioread_nolock`, `sys::mounts::image`), and
/// writeback commits no journal transaction.
fn bound_dirty_pages(k: &impl Kernel, sysfs: &Path, dev: &str) -> Result<(), SysError> {
    let bdi = sysfs.join("block").join(dev).join("bdi");
    if !k.exists(&bdi.join("max_bytes")) {
        return Ok(());
    }
    k.write_knob(&bdi.join("max_bytes"), &DIRTY_MAX_BYTES.to_string())?;
    k.write_knob(&bdi.join("strict_limit"), "1")
}

/// Makes the device complete flushes without passing them on (its queue's `write_cache` to
/// "write through"): the output is a temp file the host discards unless the build succeeds,
/// and the host `fsync`s it before moving it into place (`host/src/output.rs`), so nothing
/// needs it on the disk earlier. Until then every flush the filesystem and the e2fsprogs
/// tools make (resize2fs alone flushes hundreds of times moving blocks) waited for the host
/// disk: measured on Debian minbase, resize2fs took 0.58-0.75 s with flushes, 0.20-0.25 s
/// without. Where the device has no such knob (a partition) nothing changes.
fn skip_flushes(k: &impl Kernel, sysfs: &Path, dev: &str) -> Result<(), SysError> {
    let knob = sysfs.join("block").join(dev).join("queue/write_cache");
    if !k.exists(&knob) {
        return Ok(());
    }
    k.write_knob(&knob, "write through")
}

/// A host loop device's queue and bdi as the kernel sets them up, put back when the build
/// ends, however it ends: what [`tune`] writes outlives the device's detach (seen on 6.18),
/// and the next user of the loop device must find its flushes reaching the disk and no dirty
/// limit ([`LOOP_DEFAULTS`]). Defaults, not what was there: a worker killed before this ran
/// leaves its settings (the host then puts the defaults back, `host/src/loopdev.rs`), and
/// the next build on that device must not take them for the host's. A microVM's disk goes
/// with the VM.
pub struct LoopDefaults<'a, K: Kernel> {
    pub k: &'a K,
    pub dev: &'a Path,
}

impl<K: Kernel> Drop for LoopDefaults<'_, K> {
    fn drop(&mut self) {
        let block = Path::new("block").join(name(self.dev));
        // Nothing to tell: the build's result is already decided.
        let _ = with_sysfs(self.k, |sysfs| {
            for (knob, default) in LOOP_DEFAULTS {
                let knob = sysfs.join(&block).join(knob);
                if self.k.exists(&knob) {
                    let _ = self.k.write_knob(&knob, default);
                }
            }
        });
    }
}

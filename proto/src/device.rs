//! What a container build changes on the host's loop device its worker attaches, and the
//! settings the kernel gives a loop device, to put back: they outlive the device's detach
//! (seen on 6.18), and the next user of the device must find its flushes reaching the disk
//! and no dirty limit. The worker puts them back before it detaches the device
//! (`worker/src/tune.rs`); the host puts them back again once the sandbox has ended, for a
//! worker that could not (killed, or its build interrupted: `host/src/loopdev.rs`).

/// Each knob under `/sys/block/loopN/` and the value the kernel sets it up with
/// (`max_ratio` 100 undoes the worker's `max_bytes`).
pub const LOOP_DEFAULTS: [(&str, &str); 3] =
    [("queue/write_cache", "write back"), ("bdi/strict_limit", "0"), ("bdi/max_ratio", "100")];

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

/// The kernel's `struct loop_info64` (`<linux/loop.h>`, 232 bytes): what the worker hands
/// `LOOP_CONFIGURE` (inside `struct loop_config`) and the host reads back with
/// `LOOP_GET_STATUS64` to learn which file a device holds.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; 64],
    pub lo_crypt_name: [u8; 64],
    pub lo_encrypt_key: [u8; 32],
    pub lo_init: [u64; 2],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);

impl LoopInfo64 {
    /// Every field zero, `lo_flags` as given.
    pub const fn with_flags(lo_flags: u32) -> LoopInfo64 {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

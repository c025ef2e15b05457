//! The worker's allocator: the system's, plus a note when an allocation fails. The applier
//! runs under an address-space bound; past it an allocation fails and Rust aborts the
//! process, so the parent could not tell that from any other SIGABRT. With a descriptor set
//! by [`note_failures_on`], the failed size is written there first.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

static NOTE_FD: AtomicI32 = AtomicI32::new(-1);

/// Failed allocations are noted on `fd` (8 bytes, the size, little-endian) from now on.
pub fn note_failures_on(fd: RawFd) {
    NOTE_FD.store(fd, Ordering::SeqCst);
}

fn note(size: usize) {
    let fd = NOTE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = (size as u64).to_le_bytes();
        // SAFETY: `b` is a live 8-byte buffer; write(2) on a pipe allocates nothing and a
        // failure (closed pipe) is ignored: the note is best effort before the abort.
        let _ = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
    }
}

pub struct Noting;

// SAFETY: every call is forwarded to `System` unchanged; noting a failure only writes to a
// descriptor and never touches the allocation.
unsafe impl GlobalAlloc for Noting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which `System` needs too.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            note(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            note(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract; `ptr` came from `System`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            note(new_size);
        }
        p
    }
}

//! ext4 on the raw image, without mounting it: the layout rootbox's worker writes (read from
//! the superblock, never assumed), the canonicalising pass that makes a kernel-written image
//! reproducible, and the structural comparison behind `rootbox diff`.
//!
//! Every read is bounds-checked against the image: an image is input (a guest wrote it), so a
//! corrupt one fails with [`Ext4Error`] naming the structure, never with a panic or a read past
//! the end.

pub mod canon;
pub mod crc;
pub mod diff;
pub mod disk;
pub mod fields;
pub mod layout;
pub mod map;

pub use disk::Disk;
pub use layout::Fs;

/// What can be wrong with an image, or with reading it.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("reading {what} at byte {offset}")]
    Read {
        what: String,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {what} at byte {offset}")]
    Write {
        what: String,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("not an ext4 image: {0}")]
    NotExt4(String),
    #[error("unsupported ext4 layout: {0}")]
    Unsupported(String),
    #[error("corrupt {what}: {why}")]
    Corrupt { what: String, why: String },
}

pub type Result<T> = std::result::Result<T, Ext4Error>;

pub(crate) fn corrupt(what: impl Into<String>, why: impl Into<String>) -> Ext4Error {
    Ext4Error::Corrupt { what: what.into(), why: why.into() }
}

/// Little-endian field access on a byte slice, bounds-checked by the slice.
pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

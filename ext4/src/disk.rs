//! The image's bytes: a file or a block device, read and written at offsets.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::{Ext4Error, Result};

/// An ext4 image opened for reading (and, for the canonicalising pass, writing).
pub struct Disk {
    file: File,
    len: u64,
    name: String,
}

impl Disk {
    /// `len`: the image's size in bytes (a block device's size is not its metadata's length).
    pub fn new(file: File, len: u64, name: impl Into<String>) -> Self {
        Self { file, len, name: name.into() }
    }

    pub fn open(path: &std::path::Path) -> Result<Self> {
        let name = path.display().to_string();
        let err = |source| Ext4Error::Read { what: name.clone(), offset: 0, source };
        let file = File::open(path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        Ok(Self::new(file, len, name))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fills `buf` from `offset`; `what` names the structure in the error.
    pub fn read(&self, offset: u64, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(crate::corrupt(
                what(),
                format!("bytes {offset}+{} lie past the image's end ({})", buf.len(), self.len),
            ));
        }
        self.file.read_exact_at(buf, offset).map_err(|source| Ext4Error::Read {
            what: format!("{} of {}", what(), self.name),
            offset,
            source,
        })
    }

    pub fn write(&self, offset: u64, buf: &[u8], what: &dyn Fn() -> String) -> Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.len) {
            return Err(crate::corrupt(what(), "a write past the image's end"));
        }
        self.file.write_all_at(buf, offset).map_err(|source| Ext4Error::Write {
            what: format!("{} of {}", what(), self.name),
            offset,
            source,
        })
    }

    /// Makes what was written durable (the device's cache flushed).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_all().map_err(|source| Ext4Error::Write {
            what: format!("flushing {}", self.name),
            offset: 0,
            source,
        })
    }
}

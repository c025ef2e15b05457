//! Every raw syscall the worker makes that the safe crates do not wrap: loop-device ioctls,
//! fork, resource limits, capabilities, power-off, vsock, FITRIM, the allocator's failure
//! note. All
//! `unsafe` of the worker lives here.

pub mod alloc;
pub mod caps;
pub mod kernel;
pub mod loopdev;
pub mod mounts;
pub mod process;
pub mod seccomp;
pub mod trim;
pub mod vsock;

use std::path::PathBuf;

/// A failed system operation, naming what it touched.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path:?}")]
pub struct SysError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl SysError {
    pub fn new(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        Self { op, path: path.into(), source: source.into() }
    }
}

//! `rootbox-worker`: the part of rootbox that touches layer content, as real root, inside a
//! sandbox (PID 1 of a namespace container or of a microVM). It builds the ext4 from layer
//! bytes the host streams over the protocol and reports back. It must never write outside the
//! image it builds, never trust a name in a layer, and never outlive its job.
//!
//! The binary (`main.rs`) is a thin command line over this library; the library exists so the
//! fuzz targets (`fuzz/`) can drive the layer applier ([`apply`]) in-process, unprivileged.

// Every unsafe block of the worker is in `sys`.
#![deny(unsafe_code)]

pub mod apply;
pub mod container;
mod ext4;
#[cfg(test)]
mod recorder;
pub mod session;
mod stream;
#[allow(unsafe_code)]
pub mod sys;
mod tune;
pub mod vm;

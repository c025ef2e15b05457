//! The end-to-end tests, one binary: each file beside this one is a module holding one
//! concern's tests, so cargo links the tests once instead of once per file (as ripgrep's
//! tests do). Run a concern alone by its module path, e.g.
//! `cargo test -p rootbox-tests --test integration hostile::`.
//!
//! They need root, loop devices, the rootbox binary and its worker image (see
//! `rootbox_tests::guard`); without them a test prints `SKIP: ...`, or fails under
//! `ROOTBOX_STRICT=1`.

mod conformance;
mod e2e;
mod hardening;
mod hostile;
mod inject;
mod leftovers;
mod record;
mod registry;
mod reproducible;
mod util;
mod vm;

//! End-to-end test support for rootbox.
//!
//! This crate owns everything the root-only tests need to build container images by hand
//! (layer tars with hostile names, OCI layouts, docker archives), an independent in-memory
//! model of the OCI layer semantics, and a field-by-field snapshot of the ext4 rootbox builds.
//! It never links against rootbox itself: the CLI is driven as a black box through its binary,
//! so the tests check the documented contract and nothing else. Test helpers panic with a
//! readable message instead of returning errors where a failure means the test failed.

pub mod archive;
pub mod digest;
pub mod fixture;
pub mod guard;
pub mod layer;
pub mod lifecycle;
pub mod model;
pub mod oci;
pub mod registry;
pub mod run;
pub mod scene;
pub mod snapshot;
pub mod tree;

pub use guard::Env;
pub use tree::{diff, Kind, Mtime, Node, Tree};

//! What `pull` prints: three lines, or with `--json` one object (the stable contract, see
//! README).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::digest::Digest;

#[derive(Debug, Serialize)]
pub struct Timings {
    /// Host-side verification of every blob and diff_id.
    pub verify: u64,
    /// Sandbox start, shipping and the worker's phases, until it exited.
    pub sandbox_and_job: u64,
    /// MicroVM: from the VMM's start to the worker's connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<u64>,
    /// The worker's own phases (mkfs, apply, shrink, fsck).
    pub worker: BTreeMap<String, u64>,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub path: PathBuf,
    pub sha256: Digest,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub inodes: u64,
    pub entries: u64,
    pub source: String,
    pub source_digest: Digest,
    pub layers: Vec<Digest>,
    pub diff_ids: Vec<Digest>,
    pub uncompressed_bytes: u64,
    pub isolation: String,
    /// The microVM's VMM (`qemu`, `firecracker`), null for the container.
    pub vmm: Option<&'static str>,
    /// The microVM's accelerator (`kvm`, `tcg`), null for the container.
    pub accel: Option<&'static str>,
    /// Whether guest assets / `--inject` files were written.
    pub injected: bool,
    /// The image's os-release fields (ID, VERSION_ID, PRETTY_NAME...), as the worker read them.
    pub os_release: BTreeMap<String, String>,
    pub warnings: Vec<String>,
    pub timings_ms: Timings,
}

impl Report {
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
        } else {
            println!("path    {}", self.path.display());
            println!("sha256  {}", self.sha256.hex());
            println!("size    {}", self.size_bytes);
            for w in &self.warnings {
                eprintln!("rootbox: warning: {w}");
            }
        }
        Ok(())
    }
}

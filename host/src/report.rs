//! What `pull` prints: three lines, or with `--json` one object (the stable contract, see
//! README).

use std::collections::BTreeMap;
use std::path::PathBuf;

use rootbox_proto::SanitisedKind;
use serde::Serialize;

use crate::digest::Digest;

/// One place where the image differs from its layers (see the README's "What the worker
/// writes").
#[derive(Debug, Serialize)]
pub struct SanitisedEntry {
    /// The layer's digest, or `injected files`.
    pub layer: String,
    pub path: String,
    pub kind: SanitisedKind,
    pub what: String,
    pub why: String,
}

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
    /// Why this sandbox: the sentence `doctor` and the human output print
    /// (`no usable KVM: ...`, `asked for with --isolation vm; ...`).
    pub isolation_reason: String,
    /// Whether guest assets / `--inject` files were written.
    pub injected: bool,
    /// The image's os-release fields (ID, VERSION_ID, PRETTY_NAME...), as the worker read them.
    pub os_release: BTreeMap<String, String>,
    pub warnings: Vec<String>,
    /// The first 1,000 places where the image differs from its layers...
    pub sanitised: Vec<SanitisedEntry>,
    /// ...how many there are in all...
    pub sanitised_total: u64,
    /// ...and how many of each kind.
    pub sanitised_by_kind: BTreeMap<SanitisedKind, u64>,
    pub timings_ms: Timings,
    /// The build record (`--record FILE` writes the same object).
    pub record: crate::record::Record,
}

impl Report {
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
        } else {
            println!("path    {}", self.path.display());
            println!("sha256  {}", self.sha256.hex());
            println!("size    {}", self.size_bytes);
        }
        self.print_notes(json);
        Ok(())
    }

    /// Warnings (without `--json`; they are in the object with it) and the sanitisation
    /// summary line, on stderr.
    pub fn print_notes(&self, json: bool) {
        if !json {
            for w in &self.warnings {
                eprintln!("rootbox: warning: {}", rootbox_proto::text::printable(w, false));
            }
        }
        if let Some(line) = self.sanitised_summary() {
            eprintln!("rootbox: {line}");
        }
    }

    fn sanitised_summary(&self) -> Option<String> {
        if self.sanitised_total == 0 {
            return None;
        }
        let kinds: Vec<String> =
            self.sanitised_by_kind.iter().map(|(k, n)| format!("{}: {n}", k.describe())).collect();
        Some(format!(
            "sanitised: the image differs from its layers in {} place{} ({}); --json lists {}",
            self.sanitised_total,
            if self.sanitised_total == 1 { "" } else { "s" },
            kinds.join(", "),
            if self.sanitised_total as usize > self.sanitised.len() {
                format!("the first {}", self.sanitised.len())
            } else {
                "them".to_string()
            }
        ))
    }
}

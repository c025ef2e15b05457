//! Finding the worker image: `--worker-image DIR`, then `$ROOTBOX_WORKER_IMAGE`, then the
//! install location beside the binary (`../share/rootbox/worker-image`), then a source
//! checkout's `build/worker-image` (for `target/{debug,release}/rootbox`).

use std::path::{Path, PathBuf};

/// A usable worker image directory.
#[derive(Debug, Clone)]
pub struct WorkerImage {
    pub dir: PathBuf,
    /// How it was found, for `doctor`.
    pub found_via: &'static str,
}

impl WorkerImage {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    pub fn worker(&self) -> PathBuf {
        self.rootfs().join("bin/rootbox-worker")
    }

    /// What is missing from it, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in ["bin/rootbox-worker", "sbin/mke2fs", "sbin/e2fsck", "sbin/resize2fs"] {
            if !self.rootfs().join(p).is_file() {
                out.push(format!("{} lacks {p}", self.dir.display()));
            }
        }
        out
    }
}

fn candidates(flag: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    let mut c = Vec::new();
    if let Some(f) = flag {
        c.push((f.to_path_buf(), "--worker-image"));
        return c;
    }
    if let Some(env) = std::env::var_os("ROOTBOX_WORKER_IMAGE") {
        c.push((PathBuf::from(env), "ROOTBOX_WORKER_IMAGE"));
        return c;
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(bin) = exe.parent() {
            c.push((bin.join("../share/rootbox/worker-image"), "install location"));
            c.push((bin.join("../../build/worker-image"), "source checkout"));
        }
    }
    c
}

/// Locates the worker image, or says where it looked.
pub fn locate(flag: Option<&Path>) -> Result<WorkerImage, String> {
    let cands = candidates(flag);
    for (dir, via) in &cands {
        if dir.join("rootfs").is_dir() {
            let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            return Ok(WorkerImage { dir, found_via: via });
        }
    }
    let looked: Vec<String> =
        cands.iter().map(|(d, via)| format!("{} ({via})", d.display())).collect();
    Err(format!(
        "no worker image found (looked in: {}); build it with `make image` or pass --worker-image DIR",
        looked.join(", ")
    ))
}

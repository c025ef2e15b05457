//! Finding the worker image: `--worker-image DIR`, then `$ROOTBOX_WORKER_IMAGE`, then the
//! install location beside the binary (`../share/rootbox/worker-image`), then a source
//! checkout's `build/worker-image` (for `target/{debug,release}/rootbox`). And its digest:
//! what a build record names it by.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

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

/// What of the worker image a sandbox runs.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// The container root, `rootfs/`, as a tree.
    Rootfs,
    /// These files of the image directory (the microVM's kernel and initramfs).
    Files(&'a [&'a str]),
}

/// `digest` could not read the worker image.
#[derive(Debug, thiserror::Error)]
#[error("hashing the worker image: reading {path}")]
pub struct HashError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl WorkerImage {
    /// sha256 over `part`, deterministic and independent of where the image lies and of
    /// times and owners (which change no output byte): a sorted walk (by name bytes, never
    /// following a symlink) of entries, each as its path relative to the image directory,
    /// its type, its permission bits, and its content's sha256 (a file), its target (a
    /// symlink) or its device number; every field length-prefixed.
    pub fn digest(&self, part: Part<'_>) -> Result<Digest, HashError> {
        let mut h = Sha256::new();
        put(&mut h, b"rootbox worker image v1");
        match part {
            Part::Rootfs => walk(&self.dir, Path::new("rootfs"), &mut h)?,
            Part::Files(names) => {
                for name in names {
                    entry(&self.dir, Path::new(name), &mut h)?;
                }
            }
        }
        Ok(Digest::from_sha256(h))
    }
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Hashes the entry `rel` of `base`, and if it is a directory, what it holds, sorted.
fn walk(base: &Path, rel: &Path, h: &mut Sha256) -> Result<(), HashError> {
    if !entry(base, rel, h)? {
        return Ok(());
    }
    let dir = base.join(rel);
    let err = |source| HashError { path: dir.clone(), source };
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(err)?;
    names.sort_by(|a, b| {
        use std::os::unix::ffi::OsStrExt;
        a.as_bytes().cmp(b.as_bytes())
    });
    for name in names {
        walk(base, &rel.join(name), h)?;
    }
    Ok(())
}

/// Hashes one entry; true when it is a directory (to be walked).
fn entry(base: &Path, rel: &Path, h: &mut Sha256) -> Result<bool, HashError> {
    use std::os::unix::ffi::OsStrExt;
    let path = base.join(rel);
    let err = |source| HashError { path: path.clone(), source };
    let m = fs::symlink_metadata(&path).map_err(err)?;
    let ft = m.file_type();
    put(h, rel.as_os_str().as_bytes());
    let kind: &[u8] = if ft.is_dir() {
        b"dir"
    } else if ft.is_file() {
        b"file"
    } else if ft.is_symlink() {
        b"symlink"
    } else if ft.is_char_device() {
        b"char"
    } else if ft.is_block_device() {
        b"block"
    } else if ft.is_fifo() {
        b"fifo"
    } else {
        b"socket"
    };
    put(h, kind);
    put(h, &(m.permissions().mode() & 0o7777).to_le_bytes());
    if ft.is_file() {
        let mut content = Sha256::new();
        let mut f = fs::File::open(&path).map_err(err)?;
        io::copy(&mut f, &mut content).map_err(err)?;
        put(h, &content.finalize());
    } else if ft.is_symlink() {
        put(h, fs::read_link(&path).map_err(err)?.as_os_str().as_bytes());
    } else if ft.is_char_device() || ft.is_block_device() {
        put(h, &m.rdev().to_le_bytes());
    }
    Ok(ft.is_dir())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes one thing of the tree differ.
    type Change = fn(&Path);

    fn image(dir: &Path) -> WorkerImage {
        WorkerImage { dir: dir.to_path_buf(), found_via: "test" }
    }

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
        fs::create_dir_all(dir.join("rootfs/sbin")).unwrap();
        fs::write(dir.join("rootfs/bin/rootbox-worker"), b"worker").unwrap();
        fs::write(dir.join("rootfs/sbin/mke2fs"), b"mke2fs").unwrap();
        std::os::unix::fs::symlink("mke2fs", dir.join("rootfs/sbin/mkfs.ext4")).unwrap();
        fs::write(dir.join("vmlinux"), b"kernel").unwrap();
        fs::write(dir.join("initramfs.cpio.gz"), b"initramfs").unwrap();
    }

    const VM: Part<'static> = Part::Files(&["vmlinux", "initramfs.cpio.gz"]);

    #[test]
    fn the_digest_is_of_content_modes_and_names_not_place_or_times() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(a.path());
        tree(b.path());
        let (a, b) = (image(a.path()), image(b.path()));
        let rootfs = a.digest(Part::Rootfs).unwrap();
        assert_eq!(rootfs, b.digest(Part::Rootfs).unwrap(), "another directory, same digest");
        let vm = a.digest(VM).unwrap();
        assert_eq!(vm, b.digest(VM).unwrap());
        assert_ne!(rootfs, vm);
        // Times do not count.
        let f = fs::File::options().write(true).open(b.dir.join("rootfs/sbin/mke2fs")).unwrap();
        f.set_modified(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(b.digest(Part::Rootfs).unwrap(), rootfs);
        // Content, modes, names and symlink targets do; the VM's files are not the rootfs.
        let changes: Vec<(&str, Change)> = vec![
            ("content", |d| fs::write(d.join("rootfs/bin/rootbox-worker"), b"w2").unwrap()),
            ("mode", |d| {
                let p = d.join("rootfs/sbin/mke2fs");
                fs::set_permissions(p, fs::Permissions::from_mode(0o700)).unwrap()
            }),
            ("name", |d| {
                fs::rename(d.join("rootfs/sbin/mke2fs"), d.join("rootfs/sbin/mke2fs2")).unwrap()
            }),
            ("symlink target", |d| {
                let p = d.join("rootfs/sbin/mkfs.ext4");
                fs::remove_file(&p).unwrap();
                std::os::unix::fs::symlink("mke2fs2", p).unwrap();
            }),
            ("new file", |d| fs::write(d.join("rootfs/extra"), b"").unwrap()),
        ];
        for (what, change) in changes {
            let c = tempfile::tempdir().unwrap();
            tree(c.path());
            change(c.path());
            let c = image(c.path());
            assert_ne!(c.digest(Part::Rootfs).unwrap(), rootfs, "{what} did not count");
            assert_eq!(c.digest(VM).unwrap(), vm, "{what} of the rootfs changed the VM's digest");
        }
        let c = tempfile::tempdir().unwrap();
        tree(c.path());
        fs::write(c.path().join("initramfs.cpio.gz"), b"other").unwrap();
        assert_ne!(image(c.path()).digest(VM).unwrap(), vm);
        let e = image(Path::new("/nonexistent")).digest(VM).unwrap_err();
        assert!(e.path.ends_with("vmlinux"), "{e}");
    }
}

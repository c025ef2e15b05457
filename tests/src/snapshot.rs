//! Reads a real directory tree (normally a read-only loop mount of a built ext4) into a
//! [`Tree`]: kind, full mode, owner, size, content hash, symlink target, rdev, every xattr,
//! mtime with nanoseconds, and hardlink groups.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub use crate::tree::diff;
use crate::tree::{Kind, Mtime, Node, Tree};

/// A read-only loop mount of an image, unmounted on drop.
pub struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    /// `mount -o loop,ro IMAGE <tempdir>`.
    pub fn loop_ro(image: &Path) -> Result<Mounted> {
        let dir = tempfile::Builder::new().prefix("rootbox-mnt-").tempdir()?;
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro"])
            .arg(image)
            .arg(dir.path())
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mount -o loop,ro {} failed: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Mounted { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Mounts `image` read-only and snapshots it.
pub fn of_image(image: &Path) -> Result<Tree> {
    let m = Mounted::loop_ro(image)?;
    scan(m.path())
}

/// `(major, minor)` of a Linux `dev_t`.
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

fn hash_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn xattrs_of(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names =
        xattr::list(path).with_context(|| format!("listing xattrs of {}", path.display()))?;
    for name in names {
        let key = name.to_string_lossy().into_owned();
        let value = xattr::get(path, &name)
            .with_context(|| format!("reading xattr {key} of {}", path.display()))?
            .unwrap_or_default();
        out.insert(key, value);
    }
    Ok(out)
}

/// Everything below `root` (not `root` itself), without following symlinks.
pub fn scan(root: &Path) -> Result<Tree> {
    let mut tree = Tree::default();
    let mut inodes: BTreeMap<(u64, u64), BTreeSet<PathBuf>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for name in names {
            let rel_path = rel.join(&name);
            let abs = root.join(&rel_path);
            let meta =
                fs::symlink_metadata(&abs).with_context(|| format!("lstat {}", abs.display()))?;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_char_device() {
                Kind::Char
            } else if ft.is_block_device() {
                Kind::Block
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Socket
            };
            let node = Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: if kind == Kind::File { meta.size() } else { 0 },
                sha256: if kind == Kind::File { Some(hash_file(&abs)?) } else { None },
                target: if kind == Kind::Symlink {
                    use std::os::unix::ffi::OsStrExt;
                    Some(fs::read_link(&abs)?.as_os_str().as_bytes().to_vec())
                } else {
                    None
                },
                rdev: matches!(kind, Kind::Char | Kind::Block).then(|| split_dev(meta.rdev())),
                xattrs: xattrs_of(&abs)?,
                mtime: Some(Mtime::new(meta.mtime(), meta.mtime_nsec() as u32)),
            };
            if kind == Kind::File && meta.nlink() > 1 {
                inodes.entry((meta.dev(), meta.ino())).or_default().insert(rel_path.clone());
            }
            if kind == Kind::Dir {
                stack.push(rel_path.clone());
            }
            tree.nodes.insert(rel_path, node);
        }
    }
    tree.links = inodes.into_values().filter(|g| g.len() > 1).collect();
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers_split_like_glibc() {
        assert_eq!(split_dev(0x0103), (1, 3));
        assert_eq!(split_dev(0x0700), (7, 0));
        // makedev(259, 70000) = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
        let dev: u64 = (70000 & 0xff) | ((259 & 0xfff) << 8) | ((70000u64 & !0xff) << 12);
        assert_eq!(split_dev(dev), (259, 70000));
    }

    #[test]
    fn scans_a_plain_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::create_dir(d.path().join("sub")).expect("mkdir");
        fs::write(d.path().join("sub/f"), b"abc").expect("write");
        fs::hard_link(d.path().join("sub/f"), d.path().join("g")).expect("link");
        std::os::unix::fs::symlink("sub/f", d.path().join("s")).expect("symlink");
        let t = scan(d.path()).expect("scan");
        let names: Vec<_> = t.nodes.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["g", "s", "sub", "sub/f"]);
        assert_eq!(
            t.get("sub/f").and_then(|n| n.sha256.clone()),
            Some(crate::digest::sha256_hex(b"abc"))
        );
        assert_eq!(t.get("s").and_then(|n| n.target.clone()), Some(b"sub/f".to_vec()));
        let mut want = Tree::default();
        want.link_group(&["g", "sub/f"]);
        assert_eq!(t.links, want.links);
    }
}

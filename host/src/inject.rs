//! Files injected into every image: the default guest assets (embedded from `assets/rootfs`
//! at build time) and a caller's `--inject DIR`, packed as one root-owned tar that the worker
//! applies after the last layer under injection rules.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::digest::Digest;
use crate::source::spec::Compression;
use crate::source::{BlobLocation, CompressionHint, Layer};

/// Modification time given to the default assets (fixed, so builds are repeatable).
const ASSET_MTIME: u64 = 1_700_000_000;

enum Asset {
    Dir(&'static str),
    File(&'static str, u32, &'static [u8]),
    Symlink(&'static str, &'static str),
}

macro_rules! asset {
    ($path:literal, $mode:literal) => {
        Asset::File($path, $mode, include_bytes!(concat!("../../assets/rootfs/", $path)))
    };
}

/// The default assets, parents first. Documented in assets/README.md.
fn defaults() -> Vec<Asset> {
    vec![
        Asset::Dir("etc"),
        Asset::Dir("etc/systemd"),
        Asset::Dir("etc/systemd/system"),
        Asset::Dir("etc/systemd/system/multi-user.target.wants"),
        Asset::Dir("etc/modules-load.d"),
        Asset::Dir("usr"),
        Asset::Dir("usr/local"),
        Asset::Dir("usr/local/sbin"),
        Asset::Dir("var"),
        Asset::Dir("var/lib"),
        Asset::Dir("var/lib/rootbox"),
        asset!("usr/local/sbin/rootbox-net-bootstrap", 0o755),
        asset!("usr/local/sbin/rootbox-firstboot", 0o755),
        asset!("etc/systemd/system/rootbox-net.service", 0o644),
        asset!("etc/systemd/system/rootbox-firstboot.service", 0o644),
        Asset::Symlink(
            "etc/systemd/system/multi-user.target.wants/rootbox-net.service",
            "../rootbox-net.service",
        ),
        Asset::Symlink(
            "etc/systemd/system/multi-user.target.wants/rootbox-firstboot.service",
            "../rootbox-firstboot.service",
        ),
        asset!("etc/modules-load.d/rootbox-vsock.conf", 0o644),
        asset!("var/lib/rootbox/firstboot-pending", 0o644),
    ]
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(mtime);
    h
}

fn add_defaults<W: Write>(b: &mut tar::Builder<W>) -> Result<()> {
    for a in defaults() {
        match a {
            Asset::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0, ASSET_MTIME);
                b.append_data(&mut h, format!("{p}/"), std::io::empty())?;
            }
            Asset::File(p, mode, data) => {
                let mut h = header(tar::EntryType::Regular, mode, data.len() as u64, ASSET_MTIME);
                b.append_data(&mut h, p, data)?;
            }
            Asset::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, ASSET_MTIME);
                b.append_link(&mut h, p, target)?;
            }
        }
    }
    Ok(())
}

/// Adds the caller's tree: directories, regular files and symlinks, with their modes and
/// times, owned by root. Anything else (devices, sockets) is an error.
fn add_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path) -> Result<()> {
    // The caller's context names the tree: `packing --inject DIR`.
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let path = e.path();
            let name = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mode = m.permissions().mode() & 0o7777;
            let mtime = m.mtime().max(0) as u64;
            let ft = m.file_type();
            if ft.is_dir() {
                let mut h = header(tar::EntryType::Directory, mode, 0, mtime);
                b.append_data(&mut h, format!("{}/", name.display()), std::io::empty())?;
                stack.push(name);
            } else if ft.is_file() {
                let f = File::open(&path).with_context(|| format!("reading {}", path.display()))?;
                let mut h = header(tar::EntryType::Regular, mode, m.len(), mtime);
                b.append_data(&mut h, &name, f)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                b.append_link(&mut h, &name, &target)?;
            } else {
                let what = if ft.is_fifo() {
                    "a fifo"
                } else if ft.is_socket() {
                    "a socket"
                } else {
                    "a device"
                };
                bail!(
                    "{} is {what}; only directories, files and symlinks are injected",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// The injection layer, or `None` when there is nothing to inject.
pub fn layer(defaults_on: bool, tree: Option<&Path>) -> Result<Option<Layer>> {
    if !defaults_on && tree.is_none() {
        return Ok(None);
    }
    let spool = tempfile::tempfile().context("creating a temp file for injected files")?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(&spool));
    b.mode(tar::HeaderMode::Complete);
    if defaults_on {
        add_defaults(&mut b).context("packing the default assets")?;
    }
    if let Some(t) = tree {
        add_tree(&mut b, t).with_context(|| format!("packing --inject {}", t.display()))?;
    }
    b.into_inner()?.flush()?;
    let mut spool = spool;
    let len = spool.seek(SeekFrom::End(0))?;
    spool.seek(SeekFrom::Start(0))?;
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    std::io::copy(&mut (&spool), &mut h)?;
    let digest = Digest::from_sha256(h);
    Ok(Some(Layer {
        digest,
        verify_digest: false,
        diff_id: None,
        compression: CompressionHint::Known(Compression::None),
        blob: BlobLocation::Spooled { file: Arc::new(spool), len },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(layer: &Layer) -> Vec<(String, tar::EntryType, u64, u64)> {
        let r = layer.blob.open().unwrap();
        let mut ar = tar::Archive::new(r);
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn defaults_are_root_owned_and_complete() {
        let l = layer(true, None).unwrap().unwrap();
        let n = names(&l);
        assert!(n.iter().all(|(_, _, u, g)| *u == 0 && *g == 0));
        for want in [
            "usr/local/sbin/rootbox-net-bootstrap",
            "etc/systemd/system/multi-user.target.wants/rootbox-net.service",
            "etc/modules-load.d/rootbox-vsock.conf",
            "var/lib/rootbox/firstboot-pending",
        ] {
            assert!(n.iter().any(|(p, ..)| p == want), "{want} missing from {n:?}");
        }
    }

    #[test]
    fn nothing_to_inject() {
        assert!(layer(false, None).unwrap().is_none());
    }

    #[test]
    fn caller_tree_keeps_modes_and_refuses_fifos() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("opt")).unwrap();
        std::fs::write(d.path().join("opt/agent"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            d.path().join("opt/agent"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("agent", d.path().join("opt/agent-link")).unwrap();
        let l = layer(false, Some(d.path())).unwrap().unwrap();
        let mut ar = tar::Archive::new(l.blob.open().unwrap());
        let modes: Vec<(String, u32)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.header().mode().unwrap())
            })
            .collect();
        assert!(modes.contains(&("opt/agent".to_string(), 0o750)), "{modes:?}");
        nix::unistd::mkfifo(
            &d.path().join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let e = layer(false, Some(d.path())).unwrap_err();
        let shown = crate::exit::message(&e);
        assert!(shown.contains("is a fifo"), "{shown}");
    }
}

//! One entry created in the image: its parent made ready, whatever was at its path replaced
//! (a directory over a directory keeps its content and takes the new metadata), then the
//! entry written by kind. What ext4 or Linux cannot represent is refused or reported.

use std::io::Read;

use rootbox_proto::SanitisedKind;
use rootbox_tar::Kind;
use rustix::fd::OwnedFd;
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use super::meta::{self, Meta};
use super::name::{normalize, ImagePath};
use super::ops::Ops;
use super::root::{is_dir, lstat_at};
use super::write::{self, Content, Place, EXT4_MAX_FILE};
use super::{refused, sys, Applier, ApplyError};

/// Linux device numbers: a 12-bit major and a 20-bit minor (what mknod and ext4 store).
const MAJOR_MAX: i64 = (1 << 12) - 1;
const MINOR_MAX: i64 = (1 << 20) - 1;

impl<O: Ops> Applier<O> {
    pub(super) fn create(
        &mut self,
        path: &ImagePath,
        entry: &rootbox_tar::Entry,
        data: &mut dyn Read,
    ) -> Result<(), ApplyError> {
        let mut meta = meta::of_entry(entry, &self.limits, path, &mut self.report)
            .map_err(|source| ApplyError::Meta { path: path.to_string(), source })?;
        if self.inject {
            meta.uid = 0;
            meta.gid = 0;
        }
        self.mark_written(path);
        if path.is_root() {
            if entry.kind != Kind::Dir {
                return Err(refused(path, "a non-directory at the image root"));
            }
            let fd = self
                .root
                .resolve(path, OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(sys(path, "opening root"))?;
            write::set_meta_fd(&mut self.ops, &fd, &meta, true, path, &mut self.report)?;
            self.dir_times.insert(path.clone(), meta.mtime);
            return Ok(());
        }
        let Some((parent_path, name)) = path.split() else { return Ok(()) };
        let parent = self.root.ensure_dir(&parent_path).map_err(|e| match e {
            Errno::NOTDIR => refused(path, "an entry whose parent is not a directory"),
            Errno::LOOP | Errno::XDEV if self.inject => {
                refused(path, "to inject through a symlink the image has on this path")
            }
            e => sys(path, "creating parent directories")(e),
        })?;
        // Regular files and symlinks, most of every layer, are created at once, and only where
        // the name is taken is what holds it looked at ([`Applier::make`]).
        let deferred = !self.inject && matches!(entry.kind, Kind::Regular | Kind::Symlink);
        let existing = if deferred {
            None
        } else {
            lstat_at(&*parent, name).map_err(sys(path, "inspecting existing entry"))?
        };
        let existing_dir = existing.as_ref().is_some_and(is_dir);
        if self.inject && entry.kind != Kind::Dir && existing_dir {
            return Err(refused(path, "to inject a file where the image has a directory"));
        }
        match entry.kind {
            Kind::Dir => {
                if self.inject {
                    match existing {
                        // The image's own directory stays exactly as it was.
                        Some(_) if existing_dir => return Ok(()),
                        Some(_) => {
                            return Err(refused(
                                path,
                                "to inject a directory where the image has a non-directory",
                            ))
                        }
                        None => {}
                    }
                }
                if !existing_dir {
                    self.clear_known(&parent, name, path, existing.as_ref())?;
                    rustix::fs::mkdirat(&*parent, name, Mode::from_raw_mode(0o700))
                        .map_err(sys(path, "creating directory"))?;
                }
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(&*parent, name, flags, Mode::empty())
                    .map_err(sys(path, "opening directory"))?;
                write::set_meta_fd(
                    &mut self.ops,
                    &fd,
                    &meta,
                    existing_dir,
                    path,
                    &mut self.report,
                )?;
                self.dir_times.insert(path.clone(), meta.mtime);
            }
            Kind::Regular => {
                if entry.size > EXT4_MAX_FILE {
                    return Err(refused(
                        path,
                        format!(
                            "a file of {} bytes: ext4 with 4 KiB blocks holds at most {EXT4_MAX_FILE}",
                            entry.size
                        ),
                    ));
                }
                self.clear_known(&parent, name, path, existing.as_ref())?;
                let content = match &entry.sparse {
                    Some(segments) => Content::Sparse { size: entry.size, segments },
                    None => Content::Whole { size: entry.size },
                };
                let at = Place { parent: &parent, name, path };
                let fd = self.make(&at, "creating file", |at| write::create_regular(at, &meta))?;
                write::regular(
                    &mut self.ops,
                    at,
                    fd,
                    data,
                    content,
                    &meta,
                    &mut self.data,
                    &mut self.report,
                )?;
            }
            Kind::Symlink => {
                let target = &entry.link;
                if target.len() > self.limits.max_path_len as usize || target.is_empty() {
                    return Err(refused(
                        path,
                        format!("a symlink target of {} bytes", target.len()),
                    ));
                }
                self.clear_known(&parent, name, path, existing.as_ref())?;
                let at = Place { parent: &parent, name, path };
                self.make(&at, "creating symlink", |at| write::create_symlink(at, target))?;
                write::symlink(&mut self.ops, at, &meta, &mut self.report)?;
                self.root.invalidate();
            }
            Kind::Link => self.hardlink(&parent, name, path, &entry.link)?,
            Kind::Char | Kind::Block | Kind::Fifo => {
                self.node(&parent, name, path, entry, &meta)?
            }
            Kind::Other(t) => {
                return Err(refused(
                    path,
                    format!("unsupported tar entry type {}", rootbox_tar::shown(&[t])),
                ))
            }
        }
        Ok(())
    }

    /// Runs `create` (an entry made by name, `EEXIST` where the name is taken); where the name
    /// is taken, clears what holds it, as the overlay rules say, and creates once more.
    fn make<T>(
        &mut self,
        at: &Place<'_>,
        op: &'static str,
        create: impl Fn(&Place<'_>) -> Result<T, Errno>,
    ) -> Result<T, ApplyError> {
        match create(at) {
            Err(Errno::EXIST) => {
                let existing = lstat_at(at.parent, at.name)
                    .map_err(sys(at.path, "inspecting existing entry"))?;
                self.clear_known(at.parent, at.name, at.path, existing.as_ref())?;
                create(at).map_err(sys(at.path, op))
            }
            r => r.map_err(sys(at.path, op)),
        }
    }

    fn node(
        &mut self,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        path: &ImagePath,
        entry: &rootbox_tar::Entry,
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        let (ftype, dev) = match entry.kind {
            Kind::Char | Kind::Block => {
                let (major, minor) = (entry.dev_major, entry.dev_minor);
                let ftype = if entry.kind == Kind::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                if !(0..=MAJOR_MAX).contains(&major) || !(0..=MINOR_MAX).contains(&minor) {
                    // Stored truncated it would be another device (major 4097 is major 1's).
                    self.clear(parent, name, path)?;
                    self.report.sanitised(
                        Some(path),
                        SanitisedKind::Device,
                        format!("{} {major}:{minor} not created", entry.kind.name()),
                        "Linux device numbers have a 12-bit major and a 20-bit minor",
                    );
                    return Ok(());
                }
                (ftype, rustix::fs::makedev(major as u32, minor as u32))
            }
            _ => (FileType::Fifo, 0),
        };
        self.clear(parent, name, path)?;
        let at = Place { parent, name, path };
        write::node(&mut self.ops, at, ftype, dev, meta, &mut self.report)
    }

    fn hardlink(
        &mut self,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        path: &ImagePath,
        raw: &[u8],
    ) -> Result<(), ApplyError> {
        let tshown = rootbox_tar::shown(raw);
        if raw.is_empty() {
            return Err(refused(path, "a hardlink without a target"));
        }
        let target = normalize(raw, self.limits.max_path_len as usize).map_err(|source| {
            ApplyError::LinkTarget { path: path.to_string(), target: tshown.clone(), source }
        })?;
        let missing =
            || refused(path, format!("a hardlink to {tshown}, which does not exist in the image"));
        let Some((tdir, tname)) = target.split() else {
            return Err(refused(path, "a hardlink to the image root"));
        };
        let tparent = match self.root.dir(&tdir) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(missing()),
            Err(e) => return Err(sys(path, "resolving hardlink target")(e)),
        };
        let tst = lstat_at(&*tparent, tname)
            .map_err(sys(path, "inspecting hardlink target"))?
            .ok_or_else(missing)?;
        if is_dir(&tst) {
            return Err(refused(path, format!("a hardlink to directory {tshown}")));
        }
        if let Some(st) = lstat_at(parent, name).map_err(sys(path, "inspecting existing entry"))? {
            if st.st_ino == tst.st_ino && st.st_dev == tst.st_dev {
                return Ok(());
            }
        }
        self.clear(parent, name, path)?;
        rustix::fs::linkat(&*tparent, tname, parent, name, rustix::fs::AtFlags::empty())
            .map_err(sys(path, "creating hardlink"))
    }
}

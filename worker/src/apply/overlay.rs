//! The OCI overlay rules, applied while a layer streams: a whiteout `.wh.NAME` and an opaque
//! marker `.wh..wh..opq` hide what the lower layers had, never what their own layer wrote,
//! wherever in the layer they come. So the result is that of applying the layer's whiteouts
//! first: when a layer recreated a path before whiting it out, the lower content under it
//! goes and the layer's own stays, and a directory the layer only needed as a parent becomes
//! an implicit one (0755, root, no xattrs), as the whiteout left nothing of the lower one.

use std::ffi::OsStr;

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::name::ImagePath;
use super::ops::Ops;
use super::root::{self, is_dir, lstat_at, remove_all};
use super::{refused, sys, write, Applier, ApplyError, Written};

const DIR_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl<O: Ops> Applier<O> {
    /// Records that the layer wrote `path` (and so, implicitly, its ancestors).
    pub(super) fn mark_written(&mut self, path: &ImagePath) {
        self.layer_paths.insert(path.clone(), Written::Explicit);
        let mut p = path.clone();
        while let Some((parent, _)) = p.split() {
            if self.layer_paths.contains_key(&parent) {
                break;
            }
            self.layer_paths.insert(parent.clone(), Written::Ancestor);
            p = parent;
        }
    }

    pub(super) fn forget_dir_times(&mut self, path: &ImagePath) {
        let doomed: Vec<ImagePath> = self
            .dir_times
            .range(path.clone()..)
            .take_while(|(k, _)| k.starts_with(path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.dir_times.remove(&k);
        }
    }

    /// Removes `parent/name` (any type) before something else is put there.
    pub(super) fn clear(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &ImagePath,
    ) -> Result<(), ApplyError> {
        let st = lstat_at(parent, name).map_err(sys(path, "inspecting existing entry"))?;
        self.clear_known(parent, name, path, st.as_ref())
    }

    /// [`Self::clear`] when the caller has just looked: `existing` is what `parent/name` is.
    pub(super) fn clear_known(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        path: &ImagePath,
        existing: Option<&rustix::fs::Stat>,
    ) -> Result<(), ApplyError> {
        if let Some(st) = existing {
            if is_dir(st) {
                self.forget_dir_times(path);
            }
            remove_all(parent, name, &mut self.graves)
                .map_err(sys(path, "removing existing entry"))?;
            self.root.invalidate();
        }
        Ok(())
    }

    pub(super) fn whiteout(&mut self, target: &ImagePath) -> Result<(), ApplyError> {
        let Some((dir, name)) = target.split() else {
            return Err(refused(target, "a whiteout of the root"));
        };
        if let Some(&how) = self.layer_paths.get(target) {
            // The layer wrote here before its whiteout came: keep the layer's part only.
            let fd = match self.root.resolve(target, DIR_FLAGS) {
                Ok(fd) => fd,
                // Not a directory: the layer's own entry already replaced the lower one.
                Err(Errno::NOTDIR | Errno::LOOP | Errno::NOENT) => return Ok(()),
                Err(e) => return Err(sys(target, "opening whiteout target")(e)),
            };
            if how == Written::Ancestor {
                write::reset_implicit(&mut self.ops, &fd, target)?;
            }
            self.prune_lower(&fd, target)?;
            self.root.invalidate();
            return Ok(());
        }
        let dirfd = match self.root.dir(&dir) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(sys(target, "opening whiteout directory")(e)),
        };
        self.clear(&dirfd, name, target)
    }

    pub(super) fn opaque(&mut self, dir: &ImagePath) -> Result<(), ApplyError> {
        let marked = self.layer_paths.contains_key(dir);
        if !marked {
            self.layer_paths.insert(dir.clone(), Written::Ancestor);
        }
        let fd = match self.root.resolve(dir, DIR_FLAGS) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                self.mark_written(dir);
                self.root.ensure_dir(dir).map_err(sys(dir, "creating opaque directory"))?;
                return Ok(());
            }
            Err(e) => return Err(sys(dir, "opening opaque directory")(e)),
        };
        self.prune_lower(&fd, dir)?;
        self.root.invalidate();
        Ok(())
    }

    /// Removes everything under `dir` that the current layer did not write; directories the
    /// layer only needed as parents become implicit ones.
    fn prune_lower(&mut self, fd: &OwnedFd, dir: &ImagePath) -> Result<(), ApplyError> {
        for child in root::children(fd).map_err(sys(dir, "listing a directory"))? {
            let path = dir.join(&child);
            let st = lstat_at(fd, &child).map_err(sys(&path, "inspecting entry"))?;
            let child_is_dir = st.is_some_and(|st| is_dir(&st));
            match self.layer_paths.get(&path).copied() {
                Some(how) => {
                    if child_is_dir {
                        let sub = rustix::fs::openat(fd, &child, DIR_FLAGS, Mode::empty())
                            .map_err(sys(&path, "opening directory"))?;
                        if how == Written::Ancestor {
                            write::reset_implicit(&mut self.ops, &sub, &path)?;
                        }
                        self.prune_lower(&sub, &path)?;
                    }
                }
                None => {
                    if child_is_dir {
                        self.forget_dir_times(&path);
                    }
                    remove_all(fd, &child, &mut self.graves)
                        .map_err(sys(&path, "removing lower-layer entry"))?;
                }
            }
        }
        Ok(())
    }
}

//! The image root: every lookup of an untrusted path goes through here.
//!
//! Paths are resolved by the kernel with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! relative to the root directory, so `..` and absolute symlinks met along the way stay inside
//! the image. Only the final component is then operated on by name, never followed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{
    mkdirat, openat, openat2, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags,
    Stat,
};
use rustix::io::Errno;

use super::graveyard::Graveyard;
use super::name::ImagePath;

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
/// Parent directories kept open between entries (tar lists siblings together).
const CACHE_MAX: usize = 64;

pub struct Root {
    fd: OwnedFd,
    cache: HashMap<ImagePath, Rc<OwnedFd>>,
    resolve: ResolveFlags,
    /// Paths resolved from the root (each walks the whole path, symlinks expanded).
    #[cfg(test)]
    pub resolutions: std::cell::Cell<u64>,
}

impl Root {
    pub fn open(path: &Path) -> Result<Self, Errno> {
        let fd = openat(
            rustix::fs::CWD,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            cache: HashMap::new(),
            resolve: RESOLVE,
            #[cfg(test)]
            resolutions: Default::default(),
        })
    }

    /// From now on refuse any symlink met while resolving (injection: an asset is never
    /// written through a link the image put in its way).
    pub fn forbid_symlinks(&mut self) {
        self.resolve = RESOLVE | ResolveFlags::NO_SYMLINKS;
        self.cache.clear();
    }

    /// Forget cached directory handles: after anything that can change how a path resolves
    /// (a removal, a symlink, a type change).
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// Opens an existing directory (O_PATH), resolving `path` inside the root.
    pub fn dir(&mut self, path: &ImagePath) -> Result<Rc<OwnedFd>, Errno> {
        if let Some(fd) = self.cache.get(path) {
            return Ok(Rc::clone(fd));
        }
        let fd = Rc::new(self.resolve(path, OFlags::PATH | OFlags::DIRECTORY)?);
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(path.clone(), Rc::clone(&fd));
        Ok(fd)
    }

    /// Opens `path` inside the root with `flags` (plus O_CLOEXEC).
    pub fn resolve(&self, path: &ImagePath, flags: OFlags) -> Result<OwnedFd, Errno> {
        #[cfg(test)]
        self.resolutions.set(self.resolutions.get() + 1);
        let how = flags | OFlags::CLOEXEC;
        // EAGAIN: the kernel saw a concurrent rename; nothing else writes here, so retry.
        let mut tries = 0;
        loop {
            match openat2(&self.fd, path.for_open(), how, Mode::empty(), self.resolve) {
                Err(Errno::AGAIN) if tries < 8 => tries += 1,
                other => return other,
            }
        }
    }

    /// Opens a regular file of at most `max` bytes for reading, following symlinks inside the
    /// root whatever the current rules. It is found with `O_PATH` (which opens nothing: no
    /// driver of a device node, no fifo), checked with fstat, and only then opened for reading
    /// through that handle, so what is read is what was checked.
    pub fn open_regular(&self, path: &ImagePath, max: u64) -> Result<OwnedFd, Errno> {
        let how = OFlags::PATH | OFlags::CLOEXEC;
        let handle = openat2(&self.fd, path.for_open(), how, Mode::empty(), RESOLVE)?;
        let st = rustix::fs::fstat(&handle)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(Errno::INVAL);
        }
        if st.st_size < 0 || st.st_size as u64 > max {
            return Err(Errno::FBIG);
        }
        use std::os::fd::AsRawFd;
        let reopen = format!("/proc/self/fd/{}", handle.as_raw_fd());
        rustix::fs::open(
            reopen.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
    }

    /// Opens the directory at `path`, creating missing directories (0755, root) on the way.
    ///
    /// Walks down one component at a time from the root: a directory is looked up in its
    /// parent's handle, refusing symlinks, and only a symlink sends the prefix up to it through
    /// [`Root::resolve`] again (at most 40 in one path: the kernel's limit). Resolving the
    /// whole path again for each component would cost the square of the depth, and a few
    /// entries naming thousands of directories under a chain of symlinks would hold the
    /// applier for minutes.
    pub fn ensure_dir(&mut self, path: &ImagePath) -> Result<Rc<OwnedFd>, Errno> {
        match self.dir(path) {
            Err(Errno::NOENT) => {}
            other => return other,
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = Rc::new(self.resolve(&ImagePath::root(), flags)?);
        let mut prefix = ImagePath::root();
        for name in path.components() {
            prefix.push(name);
            let mut found = openat2(&*fd, name, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS);
            if matches!(found, Err(Errno::NOENT)) {
                match mkdirat(&*fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                }
                found = openat2(&*fd, name, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS);
            }
            fd = match found {
                Ok(next) => Rc::new(next),
                // A symlink (or one made since): resolved inside the root, under the current
                // rules; a dangling one is NOENT, as before.
                Err(Errno::LOOP) => self.dir(&prefix)?,
                Err(e) => return Err(e),
            };
        }
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(path.clone(), Rc::clone(&fd));
        Ok(fd)
    }
}

/// `lstat` of `name` in `dir`; `None` when absent.
pub fn lstat_at(dir: impl AsFd, name: &OsStr) -> Result<Option<Stat>, Errno> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Removes `name` in `dir`, recursively when it is a directory, handing each removed inode
/// to `graves` (which decides when its blocks are freed). Never follows symlinks.
pub fn remove_all(dir: impl AsFd, name: &OsStr, graves: &mut Graveyard) -> Result<(), Errno> {
    let dir = dir.as_fd();
    let Some(st) = lstat_at(dir, name)? else { return Ok(()) };
    let bytes = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
    if !is_dir(&st) {
        let inode =
            openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
        unlinkat(dir, name, AtFlags::empty())?;
        return graves.hold(inode, bytes);
    }
    let sub = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in children(&sub)? {
        remove_all(&sub, &child, graves)?;
    }
    unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    graves.hold(sub, bytes)
}

/// Names in a directory opened for reading, without `.` and `..`.
pub fn children(dir: &OwnedFd) -> Result<Vec<std::ffi::OsString>, Errno> {
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    for ent in Dir::read_from(dir)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(names)
}

//! The privileged calls of layer application: setting owners and making device nodes. The
//! worker makes them for real (as root inside the sandbox); the rule tests and the `apply`
//! fuzz target (feature `recorder`) use a recorder that needs no privilege, so whiteouts,
//! opaque directories, type flips, hardlinks and duplicates are checked on an ordinary temp
//! dir by an ordinary user.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, Dev, FileType, Gid, Mode, Uid};
use rustix::io::Errno;

pub trait Ops {
    /// The owner of an open file or directory.
    fn fchown(&mut self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno>;
    /// [`Ops::fchown`] of an inode this applier has just created, skipped where it has that
    /// owner already: a new inode holds no set-id bit or capability a chown would clear, so
    /// the skip changes nothing but the cost (most files are root's, as the applier is).
    fn fchown_new(&mut self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
        self.fchown(fd, uid, gid)
    }
    /// The owner of `name` in `dir`, the name itself (a symlink is not followed).
    fn lchownat(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Result<(), Errno>;
    /// A device node or fifo `name` in `dir`, mode 0600.
    fn mknodat(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        ftype: FileType,
        dev: Dev,
    ) -> Result<(), Errno>;
}

/// The real calls.
#[derive(Debug, Default)]
pub struct Real;

impl Ops for Real {
    fn fchown(&mut self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
        rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
    }

    fn fchown_new(&mut self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
        let st = rustix::fs::fstat(fd)?;
        if (st.st_uid, st.st_gid) == (uid, gid) {
            return Ok(());
        }
        self.fchown(fd, uid, gid)
    }

    fn lchownat(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Result<(), Errno> {
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
    }

    fn mknodat(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        ftype: FileType,
        dev: Dev,
    ) -> Result<(), Errno> {
        rustix::fs::mknodat(dir, name, ftype, Mode::from_raw_mode(0o600), dev)
    }
}

#[cfg(any(test, feature = "recorder"))]
pub mod recorder {
    //! Owners and device numbers kept by inode, beside an unprivileged temp dir: a device
    //! node is made as a fifo, the rest is real.

    use std::collections::HashMap;
    use std::ffi::OsStr;
    use std::os::fd::BorrowedFd;

    use rustix::fs::{AtFlags, Dev, FileType, Mode};
    use rustix::io::Errno;

    use super::Ops;

    #[derive(Debug, Default)]
    pub struct Recorder {
        pub owners: HashMap<u64, (u32, u32)>,
        pub devices: HashMap<u64, (FileType, Dev)>,
        /// The inode the last mknod made: the chown after it keeps its device record.
        fresh_node: Option<u64>,
        pub calls: Vec<String>,
    }

    impl Recorder {
        fn own(&mut self, ino: u64, uid: u32, gid: u32) {
            // Any other newly made inode may reuse the number of a removed device node.
            if self.fresh_node.take() != Some(ino) {
                self.devices.remove(&ino);
            }
            self.owners.insert(ino, (uid, gid));
        }
    }

    impl Ops for Recorder {
        fn fchown(&mut self, fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
            let ino = rustix::fs::fstat(fd)?.st_ino;
            self.calls.push(format!("fchown {uid}:{gid}"));
            self.own(ino, uid, gid);
            Ok(())
        }

        fn lchownat(
            &mut self,
            dir: BorrowedFd<'_>,
            name: &OsStr,
            uid: u32,
            gid: u32,
        ) -> Result<(), Errno> {
            let ino = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?.st_ino;
            self.calls.push(format!("lchown {} {uid}:{gid}", name.to_string_lossy()));
            self.own(ino, uid, gid);
            Ok(())
        }

        fn mknodat(
            &mut self,
            dir: BorrowedFd<'_>,
            name: &OsStr,
            ftype: FileType,
            dev: Dev,
        ) -> Result<(), Errno> {
            rustix::fs::mknodat(dir, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
            let ino = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?.st_ino;
            self.calls.push(format!("mknod {} {ftype:?} {dev}", name.to_string_lossy()));
            if ftype == FileType::Fifo {
                self.devices.remove(&ino);
            } else {
                self.devices.insert(ino, (ftype, dev));
            }
            self.fresh_node = Some(ino);
            Ok(())
        }
    }
}

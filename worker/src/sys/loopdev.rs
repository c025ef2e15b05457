//! Loop devices: attach a file with `LOOP_CONFIGURE` (one ioctl, atomic), autoclear on close.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use rootbox_proto::device::LoopInfo64;

use super::SysError;

const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LOOP_MAJOR: u32 = 7;

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device; detached when dropped.
pub struct LoopDevice {
    dev: File,
    path: PathBuf,
    number: u32,
}

impl LoopDevice {
    /// Attaches `backing` to a free loop device, creating its node under `dev_dir` if the
    /// directory has none (a container's private /dev).
    pub fn attach(backing: &impl AsFd, dev_dir: &Path) -> Result<Self, SysError> {
        let ctl_path = dev_dir.join("loop-control");
        let ctl = File::open(&ctl_path).map_err(|e| SysError::new("opening", &ctl_path, e))?;
        let mut last = None;
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(SysError::new(
                    "LOOP_CTL_GET_FREE on",
                    &ctl_path,
                    std::io::Error::last_os_error(),
                ));
            }
            let n = n as u32;
            let path = dev_dir.join(format!("loop{n}"));
            if !path.exists() {
                let dev = rustix::fs::makedev(LOOP_MAJOR, n);
                match rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::BlockDevice,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    dev,
                ) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(SysError::new("creating loop node", &path, e)),
                }
            }
            let dev = File::options()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| SysError::new("opening", &path, e))?;
            let mut cfg = LoopConfig {
                fd: backing.as_fd().as_raw_fd() as u32,
                block_size: 4096,
                info: LoopInfo64::with_flags(LO_FLAGS_AUTOCLEAR),
                reserved: [0; 8],
            };
            // SAFETY: `cfg` is a properly initialised `struct loop_config` that outlives the
            // call; the kernel only reads it.
            let r = unsafe {
                libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &mut cfg as *mut LoopConfig)
            };
            if r == 0 {
                return Ok(Self { dev, path, number: n });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(SysError::new("LOOP_CONFIGURE on", &path, err));
            }
            last = Some(SysError::new("LOOP_CONFIGURE on", &path, err));
        }
        Err(last.unwrap_or_else(|| {
            SysError::new(
                "finding a free loop device in",
                dev_dir,
                std::io::Error::other("none free"),
            )
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn number(&self) -> u32 {
        self.number
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // SAFETY: LOOP_CLR_FD takes no argument; failure (already cleared) is harmless.
        unsafe { libc::ioctl(self.dev.as_raw_fd(), LOOP_CLR_FD, 0) };
    }
}

//! AF_VSOCK: the microVM's only channel to the host. The worker connects out to the host
//! (CID 2); nothing listens inside the guest.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, socket, AddressFamily, SockFlag, SockType, VsockAddr};

use super::SysError;

/// The host's context id, as every guest sees it.
pub const HOST_CID: u32 = 2;

/// Where an address is described in errors (vsock has no path).
fn name(cid: u32, port: u32) -> PathBuf {
    PathBuf::from(format!("vsock:{cid}:{port}"))
}

/// Connects a stream socket to `cid:port` once.
pub fn connect_once(cid: u32, port: u32) -> Result<OwnedFd, SysError> {
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| SysError::new("creating an AF_VSOCK socket for", name(cid, port), e))?;
    socket::connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))
        .map_err(|e| SysError::new("connecting to", name(cid, port), e))?;
    Ok(fd)
}

/// Connects to `cid:port`, retrying until `patience` has passed: the vsock transport may
/// still be probing, and a refused or timed-out connect is retried. Returns the last error.
pub fn connect(cid: u32, port: u32, patience: Duration) -> Result<OwnedFd, SysError> {
    let deadline = Instant::now() + patience;
    loop {
        match connect_once(cid, port) {
            Ok(fd) => return Ok(fd),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
